//! Events a connection may subscribe to (`events.subscribe`). Each is sent as a
//! JSON-RPC notification (a request without `id`):
//!
//! | method | params |
//! |---|---|
//! | `reader.added` | `{"reader", "backend"}` |
//! | `reader.removed` | `{"reader"}` |
//! | `card.inserted` | `{"reader", "atr"}` |
//! | `card.removed` | `{"reader"}` |
//! | `payment.settled` | `{"order_id", "kind", "status"}`: a pending payment was settled |

use serde_json::{json, Value};

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    ReaderAdded {
        reader: String,
        backend: String,
    },
    ReaderRemoved {
        reader: String,
    },
    CardInserted {
        reader: String,
        atr: Vec<u8>,
    },
    CardRemoved {
        reader: String,
    },
    PaymentSettled {
        order_id: String,
        kind: crate::journal::PaymentKind,
        status: crate::journal::PaymentStatus,
    },
    /// The holder is to type on the reader's PIN pad now (api.md 1.1).
    PinPrompt {
        reader: String,
        purpose: sscard_driver::transport::pinpad::Purpose,
    },
    /// The PIN pad entry is over, whatever came of it.
    PinDone {
        reader: String,
    },
}

impl Event {
    /// `payment.settled` for a payment whose outcome the journal now holds.
    pub fn settled(p: &crate::journal::Payment) -> Event {
        Event::PaymentSettled {
            order_id: p.order_id.clone(),
            kind: p.kind,
            status: p.status,
        }
    }

    /// The notification's method name.
    pub fn method(&self) -> &'static str {
        match self {
            Event::ReaderAdded { .. } => "reader.added",
            Event::ReaderRemoved { .. } => "reader.removed",
            Event::CardInserted { .. } => "card.inserted",
            Event::CardRemoved { .. } => "card.removed",
            Event::PaymentSettled { .. } => "payment.settled",
            Event::PinPrompt { .. } => "pin.prompt",
            Event::PinDone { .. } => "pin.done",
        }
    }

    /// The JSON-RPC notification.
    pub fn to_notification(&self) -> Value {
        let params = match self {
            Event::ReaderAdded { reader, backend } => json!({"reader": reader, "backend": backend}),
            Event::ReaderRemoved { reader }
            | Event::CardRemoved { reader }
            | Event::PinDone { reader } => json!({"reader": reader}),
            Event::PinPrompt { reader, purpose } => {
                json!({"reader": reader, "purpose": purpose.as_str()})
            }
            Event::CardInserted { reader, atr } => {
                json!({"reader": reader, "atr": hex::encode_upper(atr)})
            }
            Event::PaymentSettled {
                order_id,
                kind,
                status,
            } => json!({"order_id": order_id, "kind": kind, "status": status}),
        };
        json!({"jsonrpc": "2.0", "method": self.method(), "params": params})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_have_no_id() {
        let n = Event::CardInserted {
            reader: "r".into(),
            atr: vec![0x3B, 0x6A],
        }
        .to_notification();
        assert_eq!(
            n,
            json!({"jsonrpc": "2.0", "method": "card.inserted", "params": {"reader": "r", "atr": "3B6A"}})
        );
        assert!(n.get("id").is_none());
        let n = Event::PinPrompt {
            reader: "r".into(),
            purpose: sscard_driver::transport::pinpad::Purpose::Change,
        }
        .to_notification();
        assert_eq!(
            n,
            json!({"jsonrpc": "2.0", "method": "pin.prompt", "params": {"reader": "r", "purpose": "change"}})
        );
        let n = Event::PinDone { reader: "r".into() }.to_notification();
        assert_eq!(n["method"], "pin.done");
        assert_eq!(n["params"], json!({"reader": "r"}));
    }
}
