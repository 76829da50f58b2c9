//! Degradation: from the sidecars' health reports to a level per service. The reports reach
//! etcd through [`reports`]; the elected replica's [`runner`] evaluates every service with the
//! pure logic of [`compute`] (unhealthy dependencies, level, capabilities, unready pods), writes
//! the result with its [`events`], and sends [`alerts`]. Every replica streams the levels to its
//! sidecars (`api::discovery`); operators read and override them through `api::degradation`.

pub mod alerts;
pub mod compute;
pub mod events;
pub mod reports;
pub mod runner;
