//! Summaries of repeated measurements.

use std::time::Duration;

/// Minimum, median and maximum of a set of samples, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Smallest sample.
    pub min: f64,
    /// Median (mean of the two middle samples for an even count).
    pub median: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let mid = ms.len() / 2;
        let median = if ms.len().is_multiple_of(2) {
            (ms[mid - 1] + ms[mid]) / 2.0
        } else {
            ms[mid]
        };
        Some(Summary {
            min: ms[0],
            median,
            max: ms[ms.len() - 1],
        })
    }

    /// `{"min":..,"median":..,"max":..}` with three decimals.
    pub fn json(&self) -> String {
        format!(
            "{{\"min\":{:.3},\"median\":{:.3},\"max\":{:.3}}}",
            self.min, self.median, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn odd_and_even_counts() {
        let s = Summary::of(&ms(&[5, 1, 3])).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 5.0));
        let s = Summary::of(&ms(&[4, 1, 3, 2])).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn json_shape() {
        let s = Summary::of(&ms(&[1, 2])).unwrap();
        assert_eq!(s.json(), r#"{"min":1.000,"median":1.500,"max":2.000}"#);
    }
}
