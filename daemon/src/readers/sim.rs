//! Simulated readers (`sscardd --simulate`, tests): in-process
//! [`SimReader`]s over [`SimSlot`]s that a [`SimControl`] adds, removes and fills at
//! run time. The source notices changes by looking at the slots every few milliseconds.

use super::source::{Connector, LivePresence, ReaderSource, SourceEvent};
use sscard_driver::transport::{CardTransport, TransportError};
use sscard_emulator::sim::{SimReader, SimSlot};
use sscard_emulator::VirtualCard;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The simulated readers, shared by the source and whoever plays the cardholder.
#[derive(Clone, Default)]
pub struct SimControl {
    readers: Arc<Mutex<Vec<(String, SimSlot)>>>,
}

impl SimControl {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(String, SimSlot)>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plug in an empty reader (replacing one of the same name).
    pub fn add_reader(&self, name: &str) -> SimSlot {
        let slot = SimSlot::new();
        let mut l = self.lock();
        l.retain(|(n, _)| n != name);
        l.push((name.to_string(), slot.clone()));
        slot
    }

    /// Plug in a reader holding `card`.
    pub fn add_reader_with_card(&self, name: &str, card: Box<dyn VirtualCard>) -> SimSlot {
        let slot = SimSlot::new();
        slot.insert(card);
        let mut l = self.lock();
        l.retain(|(n, _)| n != name);
        l.push((name.to_string(), slot.clone()));
        slot
    }

    /// Unplug a reader; false if there is none of that name.
    pub fn remove_reader(&self, name: &str) -> bool {
        let mut l = self.lock();
        let before = l.len();
        l.retain(|(n, _)| n != name);
        l.len() != before
    }

    /// The slot of a reader.
    pub fn slot(&self, name: &str) -> Option<SimSlot> {
        self.lock()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    }

    /// A source reporting these readers.
    pub fn source(&self) -> SimSource {
        SimSource {
            control: self.clone(),
            known: BTreeMap::new(),
        }
    }
}

fn presence(slot: &SimSlot) -> (bool, Vec<u8>) {
    match slot.with_card(|c| c.atr()) {
        Some(atr) => (true, atr),
        None => (false, Vec::new()),
    }
}

struct SimConnector {
    name: String,
    slot: SimSlot,
}

impl Connector for SimConnector {
    fn connect(&mut self) -> Result<Box<dyn CardTransport>, TransportError> {
        // PC/SC-like: a card changed under the reader needs a reconnect (reset)
        Ok(Box::new(
            SimReader::new(self.name.clone(), self.slot.clone()).require_reconnect(true),
        ))
    }
}

/// The [`ReaderSource`] of a [`SimControl`].
pub struct SimSource {
    control: SimControl,
    known: BTreeMap<String, (bool, Vec<u8>)>,
}

impl SimSource {
    fn changes(&mut self) -> Vec<SourceEvent> {
        let now: Vec<(String, SimSlot)> = self.control.lock().clone();
        let mut ev = Vec::new();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !now.iter().any(|(n, _)| n == *k))
            .cloned()
            .collect();
        for name in gone {
            if self.known.remove(&name).is_some_and(|(p, _)| p) {
                ev.push(SourceEvent::CardRemoved {
                    reader: name.clone(),
                });
            }
            ev.push(SourceEvent::ReaderRemoved(name));
        }
        for (name, slot) in now {
            let (present, atr) = presence(&slot);
            match self.known.get(&name) {
                None => {
                    let live_slot = slot.clone();
                    let live: LivePresence = Arc::new(move || presence(&live_slot));
                    ev.push(SourceEvent::ReaderAdded {
                        name: name.clone(),
                        backend: "sim",
                        connector: Box::new(SimConnector {
                            name: name.clone(),
                            slot,
                        }),
                        live: Some(live),
                        slot: None,
                        pin_pad: false,
                    });
                    if present {
                        ev.push(SourceEvent::CardInserted {
                            reader: name.clone(),
                            atr: atr.clone(),
                        });
                    }
                }
                Some((was, old_atr)) => {
                    if *was && (!present || *old_atr != atr) {
                        ev.push(SourceEvent::CardRemoved {
                            reader: name.clone(),
                        });
                    }
                    if present && (!*was || *old_atr != atr) {
                        ev.push(SourceEvent::CardInserted {
                            reader: name.clone(),
                            atr: atr.clone(),
                        });
                    }
                }
            }
            self.known.insert(name, (present, atr));
        }
        ev
    }
}

impl ReaderSource for SimSource {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<SourceEvent>, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.changes();
            let now = Instant::now();
            if !ev.is_empty() || now >= deadline {
                return Ok(ev);
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sscard_emulator::card::EmulatedCard;

    fn names(ev: &[SourceEvent]) -> Vec<String> {
        ev.iter().map(|e| format!("{e:?}")).collect()
    }

    #[test]
    fn reports_readers_and_cards_as_they_change() {
        let c = SimControl::new();
        let mut s = c.source();
        c.add_reader_with_card("a", Box::new(EmulatedCard::default_test_card()));
        let slot_b = c.add_reader("b");
        let ev = s.poll(Duration::ZERO).unwrap();
        assert_eq!(
            names(&ev),
            [
                "ReaderAdded(\"a\", sim)",
                "CardInserted(\"a\")",
                "ReaderAdded(\"b\", sim)"
            ]
        );
        assert!(s.poll(Duration::from_millis(30)).unwrap().is_empty());
        slot_b.insert(Box::new(EmulatedCard::default_test_card()));
        c.slot("a").unwrap().remove();
        let ev = s.poll(Duration::ZERO).unwrap();
        assert_eq!(names(&ev), ["CardRemoved(\"a\")", "CardInserted(\"b\")"]);
        assert!(c.remove_reader("b"));
        let ev = s.poll(Duration::ZERO).unwrap();
        assert_eq!(names(&ev), ["CardRemoved(\"b\")", "ReaderRemoved(\"b\")"]);
    }
}
