//! AFL target: [`sscard_fuzz::tlv`].

fn main() {
    afl::fuzz!(|data: &[u8]| sscard_fuzz::tlv(data));
}
