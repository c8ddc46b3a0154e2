//! Summaries of repeated measurements.

use std::time::Duration;

/// Minimum, median and maximum of a set of samples (milliseconds when made from durations).
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
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of_values(&ms)
    }

    /// Summarises plain values (any unit); `None` when there are none.
    pub fn of_values(values: &[f64]) -> Option<Summary> {
        let mut v = values.to_vec();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Some(Summary {
            min: v[0],
            median,
            max: v[v.len() - 1],
        })
    }

    /// Each of min, median and max through `f` (a change of unit).
    pub fn map(self, f: impl Fn(f64) -> f64) -> Summary {
        Summary {
            min: f(self.min),
            median: f(self.median),
            max: f(self.max),
        }
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
        let v = Summary::of_values(&[7.0, 2.0]).unwrap().map(|x| x * 2.0);
        assert_eq!((v.min, v.median, v.max), (4.0, 9.0, 14.0));
    }

    #[test]
    fn json_shape() {
        let s = Summary::of(&ms(&[1, 2])).unwrap();
        assert_eq!(s.json(), r#"{"min":1.000,"median":1.500,"max":2.000}"#);
    }
}
