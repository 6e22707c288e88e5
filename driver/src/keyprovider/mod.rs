//! Key providers: software keystore and PSAM (card profile §4, §8). (in progress)
