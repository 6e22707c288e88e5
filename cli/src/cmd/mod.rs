//! One module per subcommand.
pub mod sw;
