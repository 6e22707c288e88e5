//! PC/SC backend on the `pcsc` crate (pcsc-lite's libpcsclite): readers, connections,
//! card and reader events.
//!
//! [`PcscContext`] wraps an `SCardEstablishContext` context and re-establishes it when
//! pcscd went away and came back; [`PcscCard`] is a connected card implementing
//! [`CardTransport`]; [`Monitor`] waits for readers appearing and disappearing (the PnP
//! notification reader) and for cards inserted and removed (`SCardGetStatusChange`).
//!
//! PIN pads (PC/SC part 10): at connect the card handle asks the reader's features
//! (`SCardControl` with `CM_IOCTL_GET_FEATURE_REQUEST`); a reader that lists
//! `FEATURE_VERIFY_PIN_DIRECT` is a PIN pad ([`Capabilities::pin_pad`]), and
//! [`RawTransaction::pin_pad`] sends the PIN_VERIFY / PIN_MODIFY structure on the
//! feature's control code ([`super::pinpad`]).

use super::pinpad::{Features, PadRequest, Purpose, GET_FEATURE_REQUEST};
use super::{Capabilities, CardStatus, CardTransport, Protocol, RawTransaction, TransportError};
use std::ffi::{CStr, CString};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Map a PC/SC error into what a caller can act on; the original stays the source.
pub fn map_error(e: pcsc::Error) -> TransportError {
    use pcsc::Error as E;
    match e {
        E::NoService | E::ServiceStopped | E::InvalidHandle | E::NoReadersAvailable => {
            TransportError::ServiceUnavailable(e.to_string())
        }
        E::RemovedCard | E::ResetCard | E::UnpoweredCard => TransportError::CardRemoved,
        E::NoSmartcard => TransportError::NoCard,
        E::UnknownReader | E::ReaderUnavailable => TransportError::NoReader(e.to_string()),
        E::Timeout | E::UnresponsiveCard => TransportError::Timeout(e.to_string()),
        E::SharingViolation => TransportError::Busy,
        _ => TransportError::Pcsc(e),
    }
}

/// Read the current state of `states` without waiting (a timeout means "no change").
fn poll_now(ctx: &pcsc::Context, states: &mut [pcsc::ReaderState]) -> Result<(), TransportError> {
    match ctx.get_status_change(Duration::ZERO, states) {
        Ok(()) | Err(pcsc::Error::Timeout) => Ok(()),
        Err(e) => Err(map_error(e)),
    }
}

/// How to share the card with other programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareMode {
    Shared,
    Exclusive,
}

/// A PC/SC context that comes back after pcscd restarts.
#[derive(Clone)]
pub struct PcscContext {
    inner: Arc<Mutex<Arc<pcsc::Context>>>,
}

impl PcscContext {
    /// Establish a context; `ServiceUnavailable` when pcscd is not running.
    pub fn establish() -> Result<Self, TransportError> {
        let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(map_error)?;
        Ok(PcscContext {
            inner: Arc::new(Mutex::new(Arc::new(ctx))),
        })
    }

    /// The current context, re-established if pcscd restarted since.
    fn ctx(&self) -> Result<Arc<pcsc::Context>, TransportError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_valid().is_err() {
            let ctx = pcsc::Context::establish(pcsc::Scope::User).map_err(map_error)?;
            *g = Arc::new(ctx);
        }
        Ok(g.clone())
    }

    /// Run `f` with the context; a service error triggers one re-establish and retry.
    fn with_ctx<T>(
        &self,
        f: impl Fn(&pcsc::Context) -> Result<T, pcsc::Error>,
    ) -> Result<T, TransportError> {
        let ctx = self.ctx()?;
        match f(&ctx) {
            Err(
                pcsc::Error::InvalidHandle | pcsc::Error::ServiceStopped | pcsc::Error::NoService,
            ) => {
                let fresh =
                    Arc::new(pcsc::Context::establish(pcsc::Scope::User).map_err(map_error)?);
                *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                f(&fresh).map_err(map_error)
            }
            r => r.map_err(map_error),
        }
    }

    /// The names of the readers pcscd knows.
    pub fn list_readers(&self) -> Result<Vec<String>, TransportError> {
        match self.with_ctx(|c| c.list_readers_owned()) {
            Ok(v) => Ok(v
                .into_iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect()),
            // pcsc-lite reports "no readers" as an error; it is an empty list here
            Err(TransportError::ServiceUnavailable(m)) if m.contains("reader") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Presence and ATR of every reader, without connecting.
    pub fn reader_states(&self) -> Result<Vec<ReaderInfo>, TransportError> {
        let names = self.list_readers()?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut states: Vec<pcsc::ReaderState> = names
            .iter()
            .filter_map(|n| CString::new(n.as_str()).ok())
            .map(|n| pcsc::ReaderState::new(n, pcsc::State::UNAWARE))
            .collect();
        poll_now(&*self.ctx()?, &mut states)?;
        Ok(states.iter().map(ReaderInfo::from_state).collect())
    }

    /// Connect to the card in `reader`. `protocol` None accepts T=0 or T=1.
    pub fn connect(
        &self,
        reader: &str,
        share: ShareMode,
        protocol: Option<Protocol>,
    ) -> Result<PcscCard, TransportError> {
        let name = CString::new(reader).map_err(|_| TransportError::NoReader(reader.into()))?;
        let share = match share {
            ShareMode::Shared => pcsc::ShareMode::Shared,
            ShareMode::Exclusive => pcsc::ShareMode::Exclusive,
        };
        let protocols = match protocol {
            Some(Protocol::T0) => pcsc::Protocols::T0,
            Some(Protocol::T1) => pcsc::Protocols::T1,
            None => pcsc::Protocols::ANY,
        };
        let card = self.with_ctx(|c| c.connect(&name, share, protocols))?;
        let features = features(&card);
        Ok(PcscCard {
            ctx: self.clone(),
            card,
            reader: reader.to_string(),
            share,
            protocols,
            features,
        })
    }

    /// The part 10 features of `reader`, asked on a shared connection to the card in it;
    /// `None` when there is no card (or no connection). Not on a direct connection
    /// without a card (`SCARD_SHARE_DIRECT`): vpcd then goes on reporting a card that
    /// was pulled.
    pub fn reader_features(&self, reader: &str) -> Option<Features> {
        self.connect(reader, ShareMode::Shared, None)
            .ok()
            .map(|c| c.features)
    }

    /// A monitor for reader and card events, on a PC/SC context of its own: pcsc-lite
    /// runs the calls of one context one at a time, so a monitor waiting on this
    /// context would hold up every connect and transmit on it until its wait timed out.
    pub fn monitor(&self) -> Result<Monitor, TransportError> {
        Ok(Monitor {
            ctx: PcscContext::establish()?,
            states: Vec::new(),
            pnp: pcsc::ReaderState::new(pcsc::PNP_NOTIFICATION(), pcsc::State::UNAWARE),
            started: false,
        })
    }
}

/// Interrupts a blocking wait (`SCardCancel`).
pub struct Canceller {
    ctx: Arc<pcsc::Context>,
}

impl Canceller {
    pub fn cancel(&self) {
        let _ = self.ctx.cancel();
    }
}

/// A reader and what is in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderInfo {
    pub name: String,
    pub card_present: bool,
    pub atr: Vec<u8>,
}

impl ReaderInfo {
    fn from_state(s: &pcsc::ReaderState) -> Self {
        let present = s.event_state().contains(pcsc::State::PRESENT);
        ReaderInfo {
            name: s.name().to_string_lossy().into_owned(),
            card_present: present,
            atr: if present {
                s.atr().to_vec()
            } else {
                Vec::new()
            },
        }
    }
}

/// Something that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaderEvent {
    ReaderAdded(String),
    ReaderRemoved(String),
    CardInserted { reader: String, atr: Vec<u8> },
    CardRemoved { reader: String },
}

/// Waits for readers appearing or disappearing and cards inserted or removed.
pub struct Monitor {
    ctx: PcscContext,
    states: Vec<pcsc::ReaderState>,
    pnp: pcsc::ReaderState,
    started: bool,
}

impl Monitor {
    /// A handle that interrupts a [`Monitor::wait`] in progress from another thread.
    pub fn canceller(&self) -> Result<Canceller, TransportError> {
        Ok(Canceller {
            ctx: self.ctx.ctx()?,
        })
    }

    /// The readers as last seen.
    pub fn readers(&self) -> Vec<ReaderInfo> {
        self.states.iter().map(ReaderInfo::from_state).collect()
    }

    /// Wait up to `timeout` for changes. The first call reports every reader present
    /// and every card in them as events. An empty list means nothing changed.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<ReaderEvent>, TransportError> {
        let mut events = Vec::new();
        if !self.started {
            self.started = true;
            self.refresh_readers(&mut events)?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
        let ctx = self.ctx.ctx()?;
        // the readers' card-event counters before the wait (pcsc-lite counts every
        // insertion and removal): a card swapped between two waits leaves the presence
        // bit set but moves the counter
        let counts: Vec<u32> = self.states.iter().map(|s| s.event_count()).collect();
        let mut all: Vec<pcsc::ReaderState> = std::mem::take(&mut self.states);
        all.push(pcsc::ReaderState::new(
            self.pnp.name().to_owned(),
            self.pnp.event_state() - pcsc::State::CHANGED,
        ));
        let r = ctx.get_status_change(timeout, &mut all);
        let pnp = all.pop();
        self.states = all;
        match r {
            Ok(()) => {}
            Err(pcsc::Error::Timeout) => return Ok(events),
            Err(pcsc::Error::Cancelled) => return Ok(events),
            Err(pcsc::Error::UnknownReader) => {
                self.refresh_readers(&mut events)?;
                return Ok(events);
            }
            Err(e) => return Err(map_error(e)),
        }
        let pnp_changed = pnp
            .as_ref()
            .is_some_and(|p| p.event_state().contains(pcsc::State::CHANGED));
        if let Some(p) = pnp {
            self.pnp = p;
        }
        for (i, s) in self.states.iter_mut().enumerate() {
            let (was, now) = (s.current_state(), s.event_state());
            if now.contains(pcsc::State::CHANGED) {
                let name = s.name().to_string_lossy().into_owned();
                let before = was.contains(pcsc::State::PRESENT);
                let after = now.contains(pcsc::State::PRESENT);
                let swapped = counts.get(i).is_some_and(|c| *c != s.event_count());
                if before && after && swapped {
                    // removed and inserted (another card, or the same again) unseen
                    events.push(ReaderEvent::CardRemoved {
                        reader: name.clone(),
                    });
                    events.push(ReaderEvent::CardInserted {
                        reader: name.clone(),
                        atr: s.atr().to_vec(),
                    });
                } else if !before && after {
                    events.push(ReaderEvent::CardInserted {
                        reader: name.clone(),
                        atr: s.atr().to_vec(),
                    });
                } else if before && !after {
                    events.push(ReaderEvent::CardRemoved { reader: name });
                }
                s.sync_current_state();
            }
        }
        if pnp_changed
            || self
                .states
                .iter()
                .any(|s| s.event_state().contains(pcsc::State::UNKNOWN))
        {
            self.refresh_readers(&mut events)?;
        }
        Ok(events)
    }

    /// Reconcile the reader list with pcscd's, adding events for differences.
    fn refresh_readers(&mut self, events: &mut Vec<ReaderEvent>) -> Result<(), TransportError> {
        let names = self.ctx.list_readers()?;
        let mut kept = Vec::new();
        for s in self.states.drain(..) {
            let n = s.name().to_string_lossy().into_owned();
            if names.contains(&n) {
                kept.push(s);
            } else {
                if s.current_state().contains(pcsc::State::PRESENT) {
                    events.push(ReaderEvent::CardRemoved { reader: n.clone() });
                }
                events.push(ReaderEvent::ReaderRemoved(n));
            }
        }
        self.states = kept;
        let mut added = Vec::new();
        for n in names {
            if self.states.iter().any(|s| s.name().to_string_lossy() == n) {
                continue;
            }
            if let Ok(c) = CString::new(n.as_str()) {
                events.push(ReaderEvent::ReaderAdded(n));
                added.push(pcsc::ReaderState::new(c, pcsc::State::UNAWARE));
            }
        }
        if !added.is_empty() {
            poll_now(&*self.ctx.ctx()?, &mut added)?;
            for s in &mut added {
                if s.event_state().contains(pcsc::State::PRESENT) {
                    events.push(ReaderEvent::CardInserted {
                        reader: s.name().to_string_lossy().into_owned(),
                        atr: s.atr().to_vec(),
                    });
                }
                s.sync_current_state();
            }
            self.states.extend(added);
        }
        Ok(())
    }
}

/// A card connected through PC/SC.
pub struct PcscCard {
    ctx: PcscContext,
    card: pcsc::Card,
    reader: String,
    share: pcsc::ShareMode,
    protocols: pcsc::Protocols,
    features: Features,
}

/// The reader's part 10 features; none when it answers GET_FEATURE_REQUEST with an
/// error (vpcd's readers do) or with a list that does not parse.
fn features(card: &pcsc::Card) -> Features {
    let mut buf = [0u8; 256];
    match card.control(pcsc::ctl_code(GET_FEATURE_REQUEST.into()), &[], &mut buf) {
        Ok(tlv) => Features::parse(tlv).unwrap_or_else(|e| {
            tracing::debug!("GET_FEATURE_REQUEST answer not understood: {e}");
            Features::default()
        }),
        Err(e) => {
            tracing::trace!("GET_FEATURE_REQUEST: {e}");
            Features::default()
        }
    }
}

struct PcscTransaction<'a> {
    tx: pcsc::Transaction<'a>,
    buf: Vec<u8>,
    new_presentation: bool,
    features: Features,
}

impl RawTransaction for PcscTransaction<'_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let r = self
            .tx
            .transmit(command, &mut self.buf)
            .map_err(map_error)?;
        Ok(r.to_vec())
    }

    fn new_presentation(&self) -> bool {
        self.new_presentation
    }

    fn end_with_reset(self: Box<Self>) -> Result<(), TransportError> {
        self.tx
            .end(pcsc::Disposition::ResetCard)
            .map_err(|(_, e)| map_error(e))
    }

    fn pin_pad(&mut self, request: &PadRequest) -> Result<Vec<u8>, TransportError> {
        let code = match request.purpose() {
            Purpose::Verify => self.features.verify_pin_direct,
            Purpose::Change => self.features.modify_pin_direct,
        }
        .ok_or_else(|| {
            TransportError::Unsupported(format!(
                "the reader has no FEATURE_{}_PIN_DIRECT",
                match request.purpose() {
                    Purpose::Verify => "VERIFY",
                    Purpose::Change => "MODIFY",
                }
            ))
        })?;
        let structure = zeroize::Zeroizing::new(request.pcsc_bytes());
        // the answer is the card's (or the pad's) SW1 SW2, with data for none of ours
        let mut out = [0u8; 258];
        let r = self
            .tx
            .control(code.into(), &structure, &mut out)
            .map_err(map_error)?;
        Ok(r.to_vec())
    }
}

impl PcscCard {
    /// The reader's part 10 features, as asked at connect.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The context this card was connected through.
    pub fn context(&self) -> &PcscContext {
        &self.ctx
    }
}

impl CardTransport for PcscCard {
    fn reader_name(&self) -> String {
        self.reader.clone()
    }

    fn begin(&mut self) -> Result<Box<dyn RawTransaction + '_>, TransportError> {
        let buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        match self.card.transaction2() {
            Ok(tx) => Ok(Box::new(PcscTransaction {
                tx,
                buf,
                new_presentation: false,
                features: self.features,
            })),
            // pcsc-lite marks every handle of the reader at a removal or a reset
            // (whoever caused it) and answers that at the handle's next call: take the
            // card there now up again, as it is (no second reset for everyone else)
            Err((card, pcsc::Error::RemovedCard | pcsc::Error::ResetCard)) => {
                card.reconnect(self.share, self.protocols, pcsc::Disposition::LeaveCard)
                    .map_err(map_error)?;
                let tx = card.transaction().map_err(map_error)?;
                Ok(Box::new(PcscTransaction {
                    tx,
                    buf,
                    new_presentation: true,
                    features: self.features,
                }))
            }
            Err((_, e)) => Err(map_error(e)),
        }
    }

    fn status(&mut self) -> Result<CardStatus, TransportError> {
        match self.card.status2_owned() {
            Ok(s) => Ok(CardStatus {
                present: s.status().contains(pcsc::Status::PRESENT),
                atr: s.atr().to_vec(),
                protocol: match s.protocol2() {
                    Some(pcsc::Protocol::T0) => Some(Protocol::T0),
                    Some(pcsc::Protocol::T1) => Some(Protocol::T1),
                    _ => None,
                },
            }),
            Err(pcsc::Error::RemovedCard | pcsc::Error::NoSmartcard) => Ok(CardStatus {
                present: false,
                atr: Vec::new(),
                protocol: None,
            }),
            Err(e) => Err(map_error(e)),
        }
    }

    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        self.reconnect(pcsc::Disposition::ResetCard)
    }

    fn reattach(&mut self) -> Result<Vec<u8>, TransportError> {
        self.reconnect(pcsc::Disposition::LeaveCard)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pin_pad: self.features.pin_pad(),
            extended_length: false,
            max_command: 261,
        }
    }
}

impl PcscCard {
    /// `SCardReconnect` with `disposition`, or a new connection when the handle is gone.
    fn reconnect(&mut self, disposition: pcsc::Disposition) -> Result<Vec<u8>, TransportError> {
        match self.card.reconnect(self.share, self.protocols, disposition) {
            Ok(()) => {}
            // the handle is gone (card removed and put back, pcscd restarted): connect anew
            Err(_) => {
                let fresh = self.ctx.connect(
                    &self.reader,
                    if self.share == pcsc::ShareMode::Exclusive {
                        ShareMode::Exclusive
                    } else {
                        ShareMode::Shared
                    },
                    None,
                )?;
                self.card = fresh.card;
                self.features = fresh.features;
            }
        }
        Ok(self.status()?.atr)
    }
}

/// The name of the PnP notification pseudo-reader, for callers that watch it directly.
pub fn pnp_notification() -> &'static CStr {
    pcsc::PNP_NOTIFICATION()
}
