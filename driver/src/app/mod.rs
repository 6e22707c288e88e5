//! The card application (card profile §3 to §7) over any transport. (in progress)
