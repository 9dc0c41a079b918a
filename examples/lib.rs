//! Runnable examples live beside this file; see `[[example]]` in Cargo.toml.
