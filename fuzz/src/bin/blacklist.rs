//! AFL target: [`sscard_fuzz::blacklist`].

fn main() {
    afl::fuzz!(|data: &[u8]| sscard_fuzz::blacklist(data));
}
