//! Injection as users meet it: golden workload manifests, the admission review answers, and
//! the options and annotations every injected pod follows.

mod admission;
mod golden;
mod inject;
