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

/// A client's token budget at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenBudget {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the budget is full again.
    pub reset_secs: u64,
    pub window_secs: u64,
}

/// Every budget a client is shown: the question rate, and the tokens (each when it applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets {
    pub rate: Option<Budget>,
    pub tokens: Option<TokenBudget>,
}

/// A stream refused, and the client's budgets (nothing was spent).
pub struct Refused {
    pub refusal: Refusal,
    pub budgets: Budgets,
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
    /// The client's token budget, when one applies.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens: Option<TokenBudget>,
}
