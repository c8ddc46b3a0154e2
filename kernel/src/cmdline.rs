//! The kernel command line: space-separated `key=value` words, then optionally `--` and the
//! app's arguments (docs/boot-abi.md).
//!
//! Only `log=` means something at boot; `env=NAME=VALUE` words make the app's environment;
//! other keys are kept for later stages and ignored. Everything after the first `--` word
//! belongs to the app: its arguments, never read as kernel options.

use log::LevelFilter;

/// Log level when the command line does not set one.
pub const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Warn;

/// What the kernel takes from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options<'a> {
    /// Serial log level (`log=off|error|warn|info|debug|trace`).
    pub log_level: LevelFilter,
    /// A `log=` value that is not a level: reported once logging is up.
    pub bad_log_value: Option<&'a str>,
    /// The command line was not UTF-8 and was ignored.
    pub not_utf8: bool,
    /// An `env=` value that is not `NAME=VALUE` (the first one): reported once logging is up.
    pub bad_env_value: Option<&'a str>,
}

/// Parses the command line bytes as copied from the boot information.
pub fn parse(bytes: &[u8]) -> Options<'_> {
    let mut options = Options {
        log_level: DEFAULT_LOG_LEVEL,
        bad_log_value: None,
        not_utf8: false,
        bad_env_value: None,
    };
    let Ok(text) = core::str::from_utf8(bytes) else {
        options.not_utf8 = true;
        return options;
    };
    for (key, value) in words(text) {
        match key {
            "log" => match level(value) {
                Some(level) => options.log_level = level,
                None => options.bad_log_value = Some(value),
            },
            "env" if env_entry(value).is_none() && options.bad_env_value.is_none() => {
                options.bad_env_value = Some(value);
            }
            _ => {}
        }
    }
    options
}

/// The word that ends the kernel's options; the words after it are the app's arguments.
pub const ARGS_SEPARATOR: &str = "--";

/// The `key=value` words of `text` before `--`; words without `=` are skipped.
pub fn words(text: &str) -> impl Iterator<Item = (&str, &str)> + Clone {
    Words::new(text)
        .take_while(|word| *word != ARGS_SEPARATOR)
        .filter_map(split_at_equals)
}

/// The command line's words, split at ASCII white space.
///
/// A byte loop rather than `split_ascii_whitespace` and `split_once('=')`: guest code is
/// emulated here (~0.4 µs an instruction), and those cost ~10 instructions a byte per pass
/// (the argument and environment passes took ~2,400 instructions, ~1.9 ms, of every boot).
#[derive(Clone, Debug)]
struct Words<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Words<'a> {
        Words { text, at: 0 }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let mut i = self.at;
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let start = i;
        while bytes.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
            i += 1;
        }
        self.at = i;
        // ASCII white space never sits inside a UTF-8 sequence, so both ends are boundaries.
        (i > start).then(|| self.text.get(start..i)).flatten()
    }
}

/// `key=value` split at its first `=`; `None` without one.
fn split_at_equals(word: &str) -> Option<(&str, &str)> {
    let at = word.as_bytes().iter().position(|&b| b == b'=')?;
    Some((word.get(..at)?, word.get(at + 1..)?))
}

/// A word of the command line that the app gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppWord<'a> {
    /// An argument (see [`app_args`]).
    Arg(&'a str),
    /// An environment entry `NAME=VALUE` (see [`app_env`]).
    Env(&'a str),
}

/// The app's arguments and environment in one pass over the command line, in order.
pub fn app_words(text: &str) -> impl Iterator<Item = AppWord<'_>> + Clone {
    let mut after_separator = false;
    Words::new(text).filter_map(move |word| {
        if after_separator {
            return (!drivers::virtio_mmio::is_param(word)).then_some(AppWord::Arg(word));
        }
        if word == ARGS_SEPARATOR {
            after_separator = true;
            return None;
        }
        let value = word.strip_prefix("env=")?;
        env_entry(value).map(|_| AppWord::Env(value))
    })
}

/// The app's arguments: the words after the first `--` (none without one), but for the
/// `virtio_mmio.device=` words QEMU microvm appends to the very end of the command line
/// (they describe the machine, not the app). There is no quoting: an argument cannot
/// contain white space.
pub fn app_args(text: &str) -> impl Iterator<Item = &str> + Clone {
    app_words(text).filter_map(|w| match w {
        AppWord::Arg(arg) => Some(arg),
        AppWord::Env(_) => None,
    })
}

/// The app's environment: the `NAME=VALUE` of every well-formed `env=NAME=VALUE` word
/// before `--`, in order (a later entry for the same name wins in std).
pub fn app_env(text: &str) -> impl Iterator<Item = &str> + Clone {
    app_words(text).filter_map(|w| match w {
        AppWord::Env(entry) => Some(entry),
        AppWord::Arg(_) => None,
    })
}

/// `NAME=VALUE` with a non-empty NAME, split; `None` otherwise.
fn env_entry(value: &str) -> Option<(&str, &str)> {
    split_at_equals(value).filter(|(name, _)| !name.is_empty())
}

/// The guest agent's test knobs, from `agent.test=KNOB[,KNOB...]` (docs/boot-abi.md):
/// behaviours no production guest has, for host-vmm's tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentTest<'a> {
    /// `refuse-prepare`: the agent refuses PREPARE.
    pub refuse_prepare: bool,
    /// `stall-prepare`: the agent never answers PREPARE.
    pub stall_prepare: bool,
    /// `chatter`: the guest floods its control channel with bytes that are no frame.
    pub chatter: bool,
    /// The first knob not known, to report.
    pub unknown: Option<&'a str>,
}

/// The agent test knobs in `text` (none for every production command line).
pub fn agent_test(text: &str) -> AgentTest<'_> {
    let mut knobs = AgentTest::default();
    for (_, value) in words(text).filter(|(key, _)| *key == "agent.test") {
        for knob in value.split(',') {
            match knob {
                "refuse-prepare" => knobs.refuse_prepare = true,
                "stall-prepare" => knobs.stall_prepare = true,
                "chatter" => knobs.chatter = true,
                other => {
                    knobs.unknown.get_or_insert(other);
                }
            }
        }
    }
    knobs
}

fn level(value: &str) -> Option<LevelFilter> {
    Some(match value {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The byte loops split exactly as the standard library does, UTF-8 included.
        #[test]
        fn words_split_like_the_standard_library(text in "[ a=\t\n\\-é€😀b]{0,40}") {
            let ours: Vec<&str> = Words::new(&text).collect();
            let std: Vec<&str> = text.split_ascii_whitespace().collect();
            prop_assert_eq!(ours, std);
            for word in Words::new(&text) {
                prop_assert_eq!(split_at_equals(word), word.split_once('='));
            }
        }
    }

    #[test]
    fn default_is_warn() {
        assert_eq!(parse(b"").log_level, LevelFilter::Warn);
        assert_eq!(parse(b"console=ttyS0 quiet").log_level, LevelFilter::Warn);
    }

    #[test]
    fn every_level_parses() {
        for (text, level) in [
            ("off", LevelFilter::Off),
            ("error", LevelFilter::Error),
            ("warn", LevelFilter::Warn),
            ("info", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("trace", LevelFilter::Trace),
        ] {
            let line = format!("a=b log={text} c");
            assert_eq!(parse(line.as_bytes()).log_level, level, "{line}");
        }
    }

    #[test]
    fn last_log_word_wins_and_spacing_is_free() {
        assert_eq!(
            parse(b"  log=debug\tlog=error  ").log_level,
            LevelFilter::Error
        );
    }

    #[test]
    fn bad_value_keeps_default_and_is_reported() {
        let o = parse(b"log=loud");
        assert_eq!(o.log_level, LevelFilter::Warn);
        assert_eq!(o.bad_log_value, Some("loud"));
    }

    #[test]
    fn not_utf8_is_ignored() {
        let o = parse(b"log=info \xff");
        assert!(o.not_utf8);
        assert_eq!(o.log_level, LevelFilter::Warn);
    }

    #[test]
    fn words_after_the_separator_are_the_apps() {
        let line = "log=info env=A=1 -- one log=error -- two";
        assert_eq!(parse(line.as_bytes()).log_level, LevelFilter::Info);
        let keys: Vec<_> = words(line).map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["log", "env"]);
        let args: Vec<_> = app_args(line).collect();
        assert_eq!(args, vec!["one", "log=error", "--", "two"]);
        assert_eq!(app_args("log=info").count(), 0);
        assert_eq!(app_args("log=info --").count(), 0);
    }

    #[test]
    fn qemu_microvm_devices_are_not_the_apps() {
        // As QEMU 7.2 `-M microvm,acpi=off` passes it (measured).
        let line = "ip=198.18.0.2/24 -- a b virtio_mmio.device=512@0xfeb00e00:12";
        assert_eq!(app_args(line).collect::<Vec<_>>(), vec!["a", "b"]);
        let line = "ip=198.18.0.2/24 virtio_mmio.device=512@0xfeb00e00:12";
        assert_eq!(app_args(line).count(), 0);
        assert_eq!(app_env(line).count(), 0);
    }

    #[test]
    fn environment_takes_well_formed_env_words_before_the_separator() {
        let line = "env=HOME=/ ip=1.2.3.4/24 env=EMPTY= env=PATH=/a=b -- env=NOT=mine";
        let env: Vec<_> = app_env(line).collect();
        assert_eq!(env, vec!["HOME=/", "EMPTY=", "PATH=/a=b"]);
        assert_eq!(parse(line.as_bytes()).bad_env_value, None);
    }

    #[test]
    fn malformed_env_words_are_skipped_and_the_first_is_reported() {
        let line = "env=NOVALUE env==x env=OK=1 env=ALSO_BAD";
        assert_eq!(app_env(line).collect::<Vec<_>>(), vec!["OK=1"]);
        assert_eq!(parse(line.as_bytes()).bad_env_value, Some("NOVALUE"));
    }

    #[test]
    fn agent_test_knobs_are_off_unless_named() {
        assert_eq!(
            agent_test("log=info ip=198.18.0.2/24"),
            AgentTest::default()
        );
        let k = agent_test("agent.test=chatter,stall-prepare log=warn");
        assert!(k.chatter && k.stall_prepare && !k.refuse_prepare);
        let k = agent_test("agent.test=refuse-prepare agent.test=loud");
        assert!(k.refuse_prepare);
        assert_eq!(k.unknown, Some("loud"));
    }

    #[test]
    fn unknown_and_bare_words_are_skipped() {
        let pairs: Vec<_> = words("net=tap0 verbose ip=10.0.0.2=x").collect();
        assert_eq!(pairs, vec![("net", "tap0"), ("ip", "10.0.0.2=x")]);
    }
}
