//! ATR (ISO 7816-3 §8). Placeholder until the ATR parser lands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtrError {
    #[error("empty ATR")]
    Empty,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atr;
