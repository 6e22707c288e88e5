//! The serial reader models libccid's `libccidtwin` knows, and what differs between
//! them on the wire (as its `ccid_serial.c` sets them per model name).

use std::fmt;
use std::str::FromStr;

/// A reader model, named as in libccid's reader.conf `DEVICENAME <path>:<model>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Model {
    /// Gemalto GemPC Twin (serial): one slot, echoes every command.
    #[default]
    GemPcTwin,
    /// GemPC PinPad: one slot, a keypad, echoes.
    GemPcPinPad,
    /// GemCore POS Pro: five slots (a card and four SAMs) on one port, no echo.
    GemCorePosPro,
    /// GemCore SIM Pro: two slots, no echo.
    GemCoreSimPro,
}

impl Model {
    /// Every model, for tests and listings.
    pub const ALL: [Model; 4] = [
        Model::GemPcTwin,
        Model::GemPcPinPad,
        Model::GemCorePosPro,
        Model::GemCoreSimPro,
    ];

    /// The name libccid's reader.conf uses.
    pub fn name(self) -> &'static str {
        match self {
            Model::GemPcTwin => "GemPCTwin",
            Model::GemPcPinPad => "GemPCPinPad",
            Model::GemCorePosPro => "GemCorePOSPro",
            Model::GemCoreSimPro => "GemCoreSIMPro",
        }
    }

    /// Whether the reader sends every command back before its answer.
    pub fn echoes(self) -> bool {
        matches!(self, Model::GemPcTwin | Model::GemPcPinPad)
    }

    /// How many slots share the port (`bMaxSlotIndex` + 1).
    pub fn slots(self) -> u8 {
        match self {
            Model::GemCorePosPro => 5,
            Model::GemCoreSimPro => 2,
            Model::GemPcTwin | Model::GemPcPinPad => 1,
        }
    }

    /// The fastest rate the reader talks to a card at (libccid's `dwMaxDataRate`).
    pub fn max_data_rate(self) -> u32 {
        match self {
            Model::GemPcTwin => 344_086,
            Model::GemPcPinPad | Model::GemCorePosPro | Model::GemCoreSimPro => 500_000,
        }
    }

    /// Whether the reader has a PIN pad (`bPINSupport` verify and modify).
    pub fn pin_pad(self) -> bool {
        matches!(self, Model::GemPcPinPad)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Not a model name libccid knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown serial reader model {0:?} (GemPCTwin, GemPCPinPad, GemCorePOSPro, GemCoreSIMPro)")]
pub struct UnknownModel(pub String);

impl FromStr for Model {
    type Err = UnknownModel;

    /// Case-insensitive, as libccid compares them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Model::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownModel(s.to_string()))
    }
}

/// Split a reader spec `PATH[:MODEL]` at its last colon, since device paths may hold
/// colons (`/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0`): what follows
/// is the model if it names one, else part of the path, and the model is libccid's
/// default, the GemPC Twin.
pub fn split_spec(spec: &str) -> (&str, Model) {
    match spec.rsplit_once(':') {
        Some((path, m)) if !path.is_empty() => match m.parse() {
            Ok(model) => (path, model),
            Err(_) => (spec, Model::default()),
        },
        _ => (spec, Model::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_case_insensitively() {
        for m in Model::ALL {
            assert_eq!(m.name().parse::<Model>().unwrap(), m);
            assert_eq!(m.name().to_lowercase().parse::<Model>().unwrap(), m);
        }
        assert!("GemPC".parse::<Model>().is_err());
        assert!(Model::GemPcTwin.echoes() && !Model::GemCorePosPro.echoes());
        assert_eq!(Model::GemCorePosPro.slots(), 5);
    }

    #[test]
    fn specs_split_at_the_last_colon() {
        assert_eq!(
            split_spec("/dev/ttyUSB0:GemCorePOSPro"),
            ("/dev/ttyUSB0", Model::GemCorePosPro)
        );
        assert_eq!(split_spec("/dev/ttyS0"), ("/dev/ttyS0", Model::GemPcTwin));
        let p = "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0";
        assert_eq!(split_spec(p), (p, Model::GemPcTwin));
        assert_eq!(
            split_spec(&format!("{p}:gempcpinpad")),
            (p, Model::GemPcPinPad)
        );
    }
}
