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

    /// The HTTP status code that answers for this status on `/readyz`,
    /// `/readyz/{service}` and `/wait`: 200 OK when healthy, 503 Service
    /// Unavailable otherwise (initializing included). Upstream:
    /// `Status.HTTPStatusCode` in teleport's `lib/tbot/readyz/status.go`
    /// (`http.StatusOK` for `Healthy`, `http.StatusServiceUnavailable` by
    /// default).
    pub fn http_code(self) -> u16 {
        match self {
            Status::Healthy => 200,
            Status::Initializing | Status::Unhealthy => 503,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_codes_follow_upstream() {
        let codes: Vec<(&str, u16)> = Status::ALL
            .iter()
            .map(|s| (s.as_str(), s.http_code()))
            .collect();
        assert_eq!(
            codes,
            [("initializing", 503), ("healthy", 200), ("unhealthy", 503)]
        );
    }
}
