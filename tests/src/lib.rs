//! Bulwark end-to-end test kit.
