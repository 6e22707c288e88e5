//! AFL target: [`sscard_fuzz::atr`].

fn main() {
    afl::fuzz!(|data: &[u8]| sscard_fuzz::atr(data));
}
