//! Paging of the list routes (`GET /v1/jobs`, `/v1/workers`, `/v1/models`): `?limit=N`
//! asks for at most N items (default [`DEFAULT_PAGE_LIMIT`], at most [`MAX_PAGE_LIMIT`]),
//! and `?after=CURSOR` continues where the page whose `next` was CURSOR ended, like
//! Kubernetes' `limit` and `continue`. A cursor is opaque: pass it back as it came.
//!
//! Each page is read in one transaction; a listing of several pages taken while jobs
//! change may miss or repeat an item that moved between pages, never anything else.

use serde::{Deserialize, Serialize};

/// Items a page holds when `limit` is not given.
pub const DEFAULT_PAGE_LIMIT: u32 = 500;
/// Most items a page holds; a larger `limit` is served as this.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// `?limit=&after=` of a list route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Most items to answer (default 500; more than 1,000 is served as 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(minimum = 1))]
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// One page of a list: its items, and the cursor of the next page (None on the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent when this page is the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Why a `limit` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit must be at least 1 (it is {0})")]
pub struct BadLimit(pub u32);

/// The number of items a page with `limit` holds: the default when absent, the maximum when
/// above it.
pub fn page_limit(limit: Option<u32>) -> Result<usize, BadLimit> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT as usize),
        Some(0) => Err(BadLimit(0)),
        Some(n) => Ok(n.min(MAX_PAGE_LIMIT) as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_clamp_and_refuse_zero() {
        assert_eq!(page_limit(None), Ok(DEFAULT_PAGE_LIMIT as usize));
        assert_eq!(page_limit(Some(7)), Ok(7));
        assert_eq!(page_limit(Some(u32::MAX)), Ok(MAX_PAGE_LIMIT as usize));
        assert_eq!(page_limit(Some(0)), Err(BadLimit(0)));
    }
}
