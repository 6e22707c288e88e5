//! One module per subcommand.
pub mod apdu;
pub mod atr;
pub mod audit;
pub mod backup;
pub mod card;
pub mod info;
pub mod keys;
pub mod load;
pub mod personalize;
pub mod pin;
pub mod read;
pub mod readers;
pub mod sw;
pub mod watch;

use crate::exit::CliError;
use sscard_driver::transport::pcsc::{PcscCard, PcscContext, ShareMode};
use sscard_driver::transport::serial::model::split_spec;
use sscard_driver::transport::serial::reader::SerialReader;
use sscard_driver::transport::{CardTransport, TransportError};

/// Which reader a card command talks to: a PC/SC reader by name (default: the only one
/// holding a card), or a serial reader's slot.
#[derive(clap::Args)]
pub struct ReaderArgs {
    /// PC/SC reader name (default: the only reader holding a card).
    #[arg(long, conflicts_with = "serial")]
    reader: Option<String>,
    /// A serial reader `PATH[:MODEL]` instead (GemPCTwin, GemPCPinPad, GemCorePOSPro,
    /// GemCoreSIMPro; split at the last colon). A port sscardd is using is busy.
    #[arg(long, value_name = "PATH[:MODEL]")]
    serial: Option<String>,
    /// The slot of the serial reader (0: the card slot).
    #[arg(long, default_value_t = 0, requires = "serial")]
    slot: u8,
}

impl ReaderArgs {
    /// The card in the chosen reader.
    pub fn open(&self) -> Result<Box<dyn CardTransport>, CliError> {
        match &self.serial {
            Some(spec) => {
                let (path, model) = split_spec(spec);
                let r = SerialReader::open(path, model)
                    .map_err(|e| CliError::from(e).context(format!("serial reader {spec}")))?;
                let slot = r
                    .connect(self.slot)
                    .map_err(|e| CliError::from(e).context(format!("{spec} slot {}", self.slot)))?;
                Ok(Box::new(slot))
            }
            None => Ok(Box::new(connect(self.reader.as_deref())?)),
        }
    }
}

/// Connect to the card in `reader`, or in the only reader holding a card.
pub fn connect(reader: Option<&str>) -> Result<PcscCard, CliError> {
    let ctx = PcscContext::establish().map_err(CliError::from)?;
    let name = match reader {
        Some(r) => r.to_string(),
        None => {
            let with_card: Vec<_> = ctx
                .reader_states()
                .map_err(CliError::from)?
                .into_iter()
                .filter(|r| r.card_present)
                .collect();
            match with_card.as_slice() {
                [one] => one.name.clone(),
                [] => return Err(CliError::from(TransportError::NoCard)),
                _ => {
                    return Err(CliError::usage(format!(
                        "several readers hold a card; choose one with --reader: {}",
                        with_card
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
    };
    ctx.connect(&name, ShareMode::Shared, None)
        .map_err(|e| CliError::from(e).context(format!("reader {name}")))
}
