//! Cross-crate tests live in `tests/tests/`; this library holds the helpers they share.
