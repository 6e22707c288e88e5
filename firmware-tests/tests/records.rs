//! The card's records read three ways (card profile §3), through the in-process
//! emulator: the whole read, the policy records alone, and the policy records then the
//! rest; the last gives the whole record, and the policy read sends only its commands.

use sscard_driver::app;
use sscard_driver::keyprovider::SoftwareKeys;
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::Transaction;
use sscard_firmware_tests::card::{EmulatedCard, Knobs, Personalization};
use sscard_firmware_tests::sim::SimReader;

fn sent(r: &SimReader<EmulatedCard>) -> [u32; 256] {
    r.slot().with_card(|c| c.commands_by_ins()).unwrap()
}

fn delta(a: &[u32; 256], b: &[u32; 256], ins: u8) -> u32 {
    b[usize::from(ins)] - a[usize::from(ins)]
}

#[test]
fn policy_then_rest_is_the_whole_record_and_the_policy_read_is_seven_commands() {
    let mut p = Personalization::default_test_card();
    p.insured_status = "02".into();
    let card = EmulatedCard::new(&p, Knobs::default()).unwrap();
    let mut r = SimReader::with_card("r", Box::new(card));
    let mut keys = SoftwareKeys::test_keys(
        "650200".parse().unwrap(),
        "650200000001".parse().unwrap(),
        &[KeyPurpose::Maint],
    );
    for blocked in [false, true] {
        let whole = {
            let mut tx = Transaction::begin(&mut r).unwrap();
            app::read_card(&mut tx).unwrap()
        };
        assert_eq!(whole.blocked, blocked);
        assert_eq!(whole.insured_status, if blocked { "" } else { "02" });
        let before = sent(&r);
        let policy = {
            let mut tx = Transaction::begin(&mut r).unwrap();
            app::read_policy(&mut tx).unwrap()
        };
        let after = sent(&r);
        assert_eq!(policy, whole.policy(), "blocked {blocked}");
        // SELECT the application, EF05 and EF15; READ RECORD 01, 06, 07 and 22 (a
        // blocked application's EF15 is not readable)
        let want = if blocked { (2, 3) } else { (3, 4) };
        let total: u32 = (0..=255u8).map(|i| delta(&before, &after, i)).sum();
        assert_eq!(
            (delta(&before, &after, 0xA4), delta(&before, &after, 0xB2)),
            want
        );
        assert_eq!(total, want.0 + want.1, "nothing else");
        let again = {
            let mut tx = Transaction::begin(&mut r).unwrap();
            let p = app::read_policy(&mut tx).unwrap();
            app::read_rest(&mut tx, &p).unwrap()
        };
        assert_eq!(again, whole, "blocked {blocked}");
        if !blocked {
            let mut tx = Transaction::begin(&mut r).unwrap();
            app::select_application(&mut tx).unwrap();
            app::block_application(&mut tx, &mut keys, &whole.card_id).unwrap();
        }
    }
}
