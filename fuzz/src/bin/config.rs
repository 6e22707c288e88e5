//! AFL target: [`sscard_fuzz::config`].

fn main() {
    afl::fuzz!(|data: &[u8]| sscard_fuzz::config(data));
}
