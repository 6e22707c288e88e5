//! AFL target: [`sscard_fuzz::response_apdu`].

fn main() {
    afl::fuzz!(|data: &[u8]| sscard_fuzz::response_apdu(data));
}
