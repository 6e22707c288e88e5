//! AFL target: [`sscard_fuzz::jsonrpc`].

fn main() {
    afl::fuzz!(|data: &[u8]| sscard_fuzz::jsonrpc(data));
}
