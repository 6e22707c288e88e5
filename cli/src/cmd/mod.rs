//! One module per subcommand.
pub mod atr;
pub mod audit;
pub mod backup;
pub mod keystore;
pub mod personalize;
pub mod read;
pub mod readers;
pub mod sw;

use crate::exit::CliError;
use sscard_driver::transport::pcsc::{PcscCard, PcscContext, ShareMode};
use sscard_driver::transport::TransportError;

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
        .map_err(CliError::from)
}
