//! How a reader's page of one attempt's log is cut, the same on every backend: which
//! attempt a query means, how large the page is, and its text from the stored chunks that
//! overlap it (a gap between chunks, what the cap dropped from the middle, reads as one
//! `[... truncated: N bytes dropped ...]` line). A backend only reads the rows.

use cis490_api::{JobId, JobStatus, LogPage, LogQuery};

use super::logs::{
    ceil_boundary, floor_boundary, past_the_end, DEFAULT_LOG_PAGE_BYTES, MAX_LOG_PAGE_BYTES,
};
use super::QueueError;

/// A page before its attempt's log row is read.
pub(crate) struct PageStart {
    /// The attempt the query means: the one asked for, else the current lease's, else the
    /// last with a log; None when the job has no log at all (the page is then complete).
    pub(crate) attempt: Option<u32>,
    pub(crate) page: LogPage,
    limit: u64,
}

/// The page for `query` of job `id` (in `status`, its lease's attempt `lease_attempt`),
/// whose attempts with a log are `attempts`, oldest first.
pub(crate) fn start(
    id: &JobId,
    status: JobStatus,
    lease_attempt: Option<u32>,
    attempts: Vec<u32>,
    query: &LogQuery,
) -> PageStart {
    let current = lease_attempt.filter(|_| status.is_leased());
    let attempt = query
        .attempt
        .or(current)
        .or_else(|| attempts.last().copied());
    let limit = query
        .limit
        .unwrap_or(DEFAULT_LOG_PAGE_BYTES)
        .clamp(1, MAX_LOG_PAGE_BYTES);
    let offset = query.offset.unwrap_or(0);
    // Only the current lease appends. (An attempt number handed back may be leased again
    // and go on: a follower that wants the job's whole story follows the job, not one
    // attempt; see `cis490ctl logs -f`.)
    let finished = attempt.is_none() || attempt != current;
    PageStart {
        attempt,
        page: LogPage {
            job_id: id.clone(),
            attempt,
            attempts,
            offset,
            text: String::new(),
            next_offset: offset,
            size: 0,
            dropped_bytes: 0,
            finished,
            job_status: status,
        },
        limit,
    }
}

/// What is left to do for a page once its log row is known.
pub(crate) enum Page {
    /// Nothing to read: the page is complete.
    Ready(LogPage),
    /// Feed it the chunks that end after [`PageFill::offset`], in order of their start.
    Fill(PageFill),
}

impl PageStart {
    /// With the attempt's log row (its size and dropped bytes; None: no log yet). An offset
    /// past the log's end is refused.
    pub(crate) fn with_log(self, log: Option<(u64, u64)>) -> Result<Page, QueueError> {
        let PageStart {
            mut page, limit, ..
        } = self;
        let Some((size, dropped)) = log else {
            if page.offset > 0 {
                return Err(past_the_end(page.offset, 0));
            }
            return Ok(Page::Ready(page));
        };
        page.size = size;
        page.dropped_bytes = dropped;
        if page.offset > size {
            return Err(past_the_end(page.offset, size));
        }
        Ok(Page::Fill(PageFill {
            at: page.offset,
            budget: usize::try_from(limit).unwrap_or(usize::MAX),
            page,
        }))
    }
}

/// A page being filled from its log's chunks.
pub(crate) struct PageFill {
    page: LogPage,
    /// The log offset the text reaches so far.
    at: u64,
    /// Bytes the page may still take.
    budget: usize,
}

impl PageFill {
    /// Where the page starts: chunks that end at or before it are not needed.
    pub(crate) fn offset(&self) -> u64 {
        self.page.offset
    }

    /// Adds the chunk of the log that starts at `start`; false when the page is full (read
    /// no more chunks).
    pub(crate) fn push(&mut self, start: u64, data: Vec<u8>) -> Result<bool, QueueError> {
        let text = String::from_utf8(data).map_err(|e| {
            QueueError::corrupt(format!("log of job {}: {e}", self.page.job_id.short()))
        })?;
        if start > self.at {
            self.page.text.push_str(&format!(
                "[... truncated: {} bytes dropped ...]\n",
                start - self.at
            ));
            self.at = start;
        }
        let skip = usize::try_from(self.at.saturating_sub(start)).unwrap_or(usize::MAX);
        let from = ceil_boundary(&text, skip);
        let mut to = floor_boundary(&text, from.saturating_add(self.budget));
        if to == from && from < text.len() {
            // Less room than one character: take it anyway, so every page moves on.
            to = ceil_boundary(&text, from + 1);
        }
        self.page.text.push_str(&text[from..to]);
        self.budget = self.budget.saturating_sub(to - from);
        self.at = start + to as u64;
        Ok(self.budget > 0 && to == text.len())
    }

    /// The page, its next offset where the text ends.
    pub(crate) fn finish(mut self) -> LogPage {
        self.page.next_offset = self.at;
        self.page
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::queue::test_support::id_of;

    fn query(offset: u64, limit: u64) -> LogQuery {
        LogQuery {
            offset: Some(offset),
            limit: Some(limit),
            ..LogQuery::default()
        }
    }

    /// The page of `query` over a log of `size` bytes held as `chunks` (start, text).
    fn read(query: &LogQuery, size: u64, chunks: &[(u64, &str)]) -> Result<LogPage, QueueError> {
        let start = start(&id_of("j"), JobStatus::Completed, None, vec![1], query);
        let mut fill = match start.with_log(Some((size, 0)))? {
            Page::Ready(page) => return Ok(page),
            Page::Fill(fill) => fill,
        };
        for (at, text) in chunks {
            if at + text.len() as u64 <= fill.offset() {
                continue;
            }
            if !fill.push(*at, text.as_bytes().to_vec())? {
                break;
            }
        }
        Ok(fill.finish())
    }

    #[test]
    fn a_page_takes_what_fits_marks_gaps_and_never_splits_a_character() {
        let chunks = [(0, "hello\n"), (10, "wörld\n")];
        // (offset, limit) -> (text, next offset)
        for (offset, limit, text, next) in [
            (
                0,
                100,
                "hello\n[... truncated: 4 bytes dropped ...]\nwörld\n",
                17,
            ),
            (0, 3, "hel", 3),
            (
                3,
                100,
                "lo\n[... truncated: 4 bytes dropped ...]\nwörld\n",
                17,
            ),
            // 'ö' is two bytes: a page of 2 after "w" takes it whole, one of 1 too.
            (11, 1, "ö", 13),
            (11, 2, "ö", 13),
            (17, 100, "", 17),
        ] {
            let page = read(&query(offset, limit), 17, &chunks).unwrap();
            assert_eq!(
                (page.text.as_str(), page.next_offset),
                (text, next),
                "{offset}+{limit}"
            );
        }
    }

    #[test]
    fn the_attempt_and_the_ends_of_a_log() {
        let id = id_of("j");
        let running = start(
            &id,
            JobStatus::Running,
            Some(3),
            vec![1, 2, 3],
            &LogQuery::default(),
        );
        assert_eq!(running.attempt, Some(3));
        assert!(!running.page.finished, "the current lease still appends");
        let earlier = LogQuery {
            attempt: Some(1),
            ..LogQuery::default()
        };
        let old = start(&id, JobStatus::Running, Some(3), vec![1, 2, 3], &earlier);
        assert_eq!(old.attempt, Some(1));
        assert!(old.page.finished);
        let done = start(
            &id,
            JobStatus::Completed,
            Some(3),
            vec![1, 2],
            &LogQuery::default(),
        );
        assert_eq!(
            done.attempt,
            Some(2),
            "no lease: the last attempt with a log"
        );
        let none = start(&id, JobStatus::Pending, None, vec![], &LogQuery::default());
        assert_eq!(none.attempt, None);

        let past = read(&query(18, 10), 17, &[]).unwrap_err().to_string();
        assert!(past.contains("past the end"), "{past}");
        let no_log = start(&id, JobStatus::Running, Some(1), vec![], &query(5, 10));
        assert!(
            no_log.with_log(None).is_err(),
            "an offset into a log that is not there"
        );
    }
}
