//! Personalization through pcscd → vpcd → `sscard-vcard --blank`, interrupted after
//! every command (the card pulled and its power cut: the vcard process is stopped and
//! restarted from its image), then resumed to ISSUED. Run under `scripts/with-pcscd`.

use sscard_driver::app;
use sscard_driver::personalize::{self, IssuerKeys, Mode, PersoRecord};
use sscard_driver::transport::{
    CardStatus, CardTransport, RawTransaction, Transaction, TransportError,
};
use sscard_firmware_tests::testbed::{SlotLease, Vcard};

/// A transport that lets `budget` commands through, then behaves as a pulled card.
struct Cut<'a> {
    inner: &'a mut dyn CardTransport,
    budget: usize,
}
struct CutTx<'a> {
    raw: Box<dyn RawTransaction + 'a>,
    budget: &'a mut usize,
}
impl RawTransaction for CutTx<'_> {
    fn transmit_raw(&mut self, c: &[u8]) -> Result<Vec<u8>, TransportError> {
        if *self.budget == 0 {
            return Err(TransportError::CardRemoved);
        }
        *self.budget -= 1;
        self.raw.transmit_raw(c)
    }
}
impl CardTransport for Cut<'_> {
    fn reader_name(&self) -> String {
        self.inner.reader_name()
    }
    fn begin(&mut self) -> Result<Box<dyn RawTransaction + '_>, TransportError> {
        let raw = self.inner.begin()?;
        Ok(Box::new(CutTx {
            raw,
            budget: &mut self.budget,
        }))
    }
    fn status(&mut self) -> Result<CardStatus, TransportError> {
        self.inner.status()
    }
    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        self.inner.reset()
    }
}

fn record() -> PersoRecord {
    serde_json::from_value(serde_json::json!({
        "card_number": "A65020777", "ssn": "650102200001011234", "name": "赵六", "gender": "9",
        "nation": "01", "birthplace": "650102", "birth_date": "2000-01-01",
        "issue_date": "2026-11-23", "expiry_date": "2036-11-23", "insured_category": "01",
        "pooling_region": "650200", "region": "650200", "pin": "246810"
    }))
    .unwrap()
}

#[test]
fn interrupted_after_every_command_then_resumed_through_pcscd() {
    let keys = IssuerKeys::test_keys("650200".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut lease = Some(SlotLease::acquire());
    let mut cut = 0usize;
    loop {
        let img = dir.path().join(format!("chip-{cut}.json"));
        let args = [
            "--blank",
            "--serial",
            "0102030405060708",
            "--image",
            img.to_str().unwrap(),
        ];
        // first run: cut after `cut` commands
        let mut v = Vcard::start_in(lease.take().unwrap(), &args);
        let finished = {
            let mut card = v.connect();
            let mut c = Cut {
                inner: &mut card,
                budget: cut,
            };
            let mut tx = Transaction::begin(&mut c).unwrap();
            personalize::personalize(&mut tx, &keys, &record(), Mode::Resume).is_ok()
        };
        if finished {
            assert!(cut > 20, "a whole personalization in {cut} commands?");
            break;
        }
        // power cut: the chip program stops and comes back from its image
        v.stop();
        let v2 = Vcard::start_in(take_lease(v), &args);
        let mut card = v2.connect();
        let mut tx = Transaction::begin(&mut card).unwrap();
        let id = personalize::personalize(&mut tx, &keys, &record(), Mode::Resume)
            .unwrap_or_else(|e| panic!("resume after {cut} commands: {e}"));
        let rec = app::read_card(&mut tx).unwrap();
        assert_eq!((rec.card_id, rec.name.as_str()), (id, "赵六"), "cut {cut}");
        app::verify_pin(&mut tx, &app::Pin::new("246810").unwrap()).unwrap();
        drop(tx);
        drop(card);
        lease = Some(take_lease(v2));
        cut += 1;
    }
}

/// Stop a vcard and get its slot back.
fn take_lease(v: Vcard) -> SlotLease {
    v.into_lease()
}
