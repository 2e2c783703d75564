//! A service's health, as upstream's `readyz` status.go names it.

use serde::Serialize;

/// A service's health: `initializing` until its first report, then
/// `healthy` or `unhealthy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Initializing,
    Healthy,
    Unhealthy,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Initializing, Status::Healthy, Status::Unhealthy];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Initializing => "initializing",
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
        }
    }
}
