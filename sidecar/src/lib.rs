//! Bulwark sidecar.
