//! AFL target: [`sscard_fuzz::serial_frame`].

fn main() {
    afl::fuzz!(|data: &[u8]| sscard_fuzz::serial_frame(data));
}
