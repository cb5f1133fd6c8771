//! What an admission decides, on either side of the store: a client's budget, a refusal, and what
//! `/api/limits` shows.

use crate::error::Refusal;

/// A client's budget at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the budget is full again.
    pub reset_secs: u64,
}

impl Budget {
    /// This budget as a refusal for the rate leaves it: full again no sooner than `wait` from now.
    pub fn waiting(self, wait: std::time::Duration) -> Self {
        Self {
            reset_secs: self.reset_secs.max(crate::error::ceil_secs(wait)),
            ..self
        }
    }
}

/// A stream refused, and the client's budget (nothing was spent).
pub struct Refused {
    pub refusal: Refusal,
    pub budget: Option<Budget>,
}

/// What `/api/limits` tells a client about itself.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LimitsView {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
    pub streams_open: u32,
    pub max_streams_per_client: u32,
    pub max_query_chars: u32,
}
