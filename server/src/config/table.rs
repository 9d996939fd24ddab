//! The machinery behind the settings table in `config/mod.rs`: one macro
//! turns each row (help, name, type, default, check, flag options) into the
//! command-line flag and its environment variable, the config file key, the
//! resolved field of [`Config`](super::Config), and a line of `config
//! print`. Values from the command line and from the file go through the
//! same parser, so a file accepts exactly what a flag does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where a setting's value came from, highest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "command line",
            Source::Env => "environment",
            Source::File => "config file",
            Source::Default => "default",
        }
    }
}

/// A setting's value written as `config print` shows it: a line of TOML
/// that a config file accepts back.
pub trait Shown {
    fn shown(&self) -> Option<String>;
}

macro_rules! shown_as_number {
    ($($t:ty),*) => {
        $(impl Shown for $t {
            fn shown(&self) -> Option<String> {
                Some(self.to_string())
            }
        })*
    };
}
shown_as_number!(usize, u32, u64, bool);

impl Shown for Duration {
    fn shown(&self) -> Option<String> {
        Some(format!("\"{}\"", humantime::format_duration(*self)))
    }
}

impl Shown for String {
    fn shown(&self) -> Option<String> {
        Some(toml_string(self))
    }
}

impl Shown for PathBuf {
    fn shown(&self) -> Option<String> {
        Some(toml_string(&self.display().to_string()))
    }
}

impl Shown for SocketAddr {
    fn shown(&self) -> Option<String> {
        Some(toml_string(&self.to_string()))
    }
}

impl<T: Shown> Shown for Option<T> {
    fn shown(&self) -> Option<String> {
        self.as_ref().and_then(Shown::shown)
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A resolved setting from its parsed value (if any was given) and its
/// default: a value, or an optional one.
pub trait Resolve<V>: Sized {
    fn resolve(given: Option<V>, default: Self) -> Self;
}

impl<T> Resolve<T> for T {
    fn resolve(given: Option<T>, default: T) -> T {
        given.unwrap_or(default)
    }
}

impl<T> Resolve<T> for Option<T> {
    fn resolve(given: Option<T>, default: Option<T>) -> Option<T> {
        given.or(default)
    }
}

/// A config file value as the text a flag would carry.
pub fn file_text(key: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "{key}: expected a string, number or boolean, got {}",
            other.type_str()
        )),
    }
}

/// The checks a row may name: each takes the setting's name and value.
pub mod check {
    use std::fmt::Display;
    use std::ops::RangeInclusive;
    use std::time::Duration;

    pub fn any<T>(_: &str, _: &T) -> Result<(), String> {
        Ok(())
    }

    pub fn within<T: PartialOrd + Display + Copy>(
        range: RangeInclusive<T>,
    ) -> impl Fn(&str, &T) -> Result<(), String> {
        move |name, v| {
            if range.contains(v) {
                Ok(())
            } else {
                Err(format!(
                    "{name} must be {}..={}, got {v}",
                    range.start(),
                    range.end()
                ))
            }
        }
    }

    pub fn at_least(min: Duration) -> impl Fn(&str, &Duration) -> Result<(), String> {
        move |name, v| {
            if *v >= min {
                Ok(())
            } else {
                Err(format!(
                    "{name} must be at least {}, got {}",
                    humantime::format_duration(min),
                    humantime::format_duration(*v)
                ))
            }
        }
    }

    pub fn at_most(max: Duration) -> impl Fn(&str, &Duration) -> Result<(), String> {
        move |name, v| {
            if *v <= max {
                Ok(())
            } else {
                Err(format!(
                    "{name} must be at most {}, got {}",
                    humantime::format_duration(max),
                    humantime::format_duration(*v)
                ))
            }
        }
    }
}

/// The settings table: see `config/mod.rs`. Each row is
///
/// ```text
/// /// help (shown by --help, with "[default: ...]")
/// name: Parsed => Resolved = default, parse fn, check fn, [clap options];
/// ```
///
/// `Parsed` is what a flag or file value parses into, `Resolved` the
/// field of `Config` (`Parsed`, or `Option<Parsed>` for a setting that may
/// stay unset). Fields of `Config` that are not settings follow `fixed`.
macro_rules! settings {
    (
        $(
            $(#[doc = $doc:literal])*
            $name:ident : $parsed:ty => $resolved:ty = $default:expr,
                parse $parse:expr, check $check:expr, [$($clap:tt)*];
        )*
        @fixed {
            $(
                $(#[doc = $fdoc:literal])*
                $fname:ident : $fty:ty = $fdefault:expr,
            )*
        }
    ) => {
        /// Command line of `expresscache-server`.
        #[derive(Debug, Clone, Default, clap::Parser)]
        #[command(
            name = "expresscache-server",
            version,
            about = "Warms S3 Express One Zone directory buckets from general-purpose S3 buckets (gRPC service)"
        )]
        pub struct Args {
            #[command(subcommand)]
            pub command: Option<ServerCommand>,
            /// TOML file with any of the settings below (keys in snake_case).
            #[arg(long, global = true, env = "EXPRESSCACHE_CONFIG")]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(long, value_parser = $parse, $($clap)*)]
                pub $name: Option<$parsed>,
            )*
            /// Where each setting given came from (command line or
            /// environment), filled by [`Args::parse_with_sources`].
            #[arg(skip)]
            pub sources: std::collections::BTreeMap<&'static str, table::Source>,
        }

        impl Args {
            /// Parses the command line and notes which settings came from
            /// the environment rather than from a flag.
            pub fn parse_with_sources() -> Self {
                use clap::{CommandFactory, FromArgMatches};
                let matches = Self::command().get_matches();
                let mut args = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
                // A subcommand's own matches carry the global flags.
                let sub = matches.subcommand().map(|(_, m)| m);
                $(
                    let name = stringify!($name);
                    let source = [Some(&matches), sub]
                        .into_iter()
                        .flatten()
                        .filter(|m| m.ids().any(|id| id.as_str() == name))
                        .find_map(|m| m.value_source(name));
                    if let Some(s) = source {
                        args.sources.insert(
                            name,
                            if s == clap::parser::ValueSource::EnvVariable {
                                table::Source::Env
                            } else {
                                table::Source::Flag
                            },
                        );
                    }
                )*
                args
            }
        }

        /// Fully resolved settings.
        #[derive(Debug, Clone)]
        pub struct Config {
            $(
                $(#[doc = $doc])*
                pub $name: $resolved,
            )*
            $(
                $(#[doc = $fdoc])*
                pub $fname: $fty,
            )*
            /// Where each setting's value came from, for `config print`.
            pub sources: Vec<(&'static str, table::Source)>,
        }

        /// The defaults, in one place: every settings struct the server
        /// runs on takes its configurable values from here.
        impl Default for Config {
            fn default() -> Self {
                Self {
                    $($name: $default,)*
                    $($fname: $fdefault,)*
                    sources: Vec::new(),
                }
            }
        }

        /// `text` parsed as setting `name` would be, as `config print`
        /// would show it (tests check each default against its help).
        #[cfg(test)]
        fn shown_as(name: &str, text: &str) -> Option<Result<Option<String>, String>> {
            $(
                if name == stringify!($name) {
                    return Some(($parse)(text).map(|v: $parsed| table::Shown::shown(&v)));
                }
            )*
            None
        }

        /// The config file keys: the settings' names.
        const FILE_KEYS: &[&str] = &[$(stringify!($name)),*];

        impl Config {
            /// Each setting from the command line or environment, else the
            /// config file, else its default; then its own check.
            fn resolve_each(
                args: &Args,
                mut file: std::collections::BTreeMap<String, toml::Value>,
            ) -> Result<Self, String> {
                let mut config = Config::default();
                $(
                    let name = stringify!($name);
                    let from_file = match file.remove(name) {
                        Some(v) => {
                            let text = table::file_text(name, &v)?;
                            let parsed: $parsed = ($parse)(text.as_str()).map_err(|e| {
                                let path = args.config.as_deref().unwrap_or(std::path::Path::new("?"));
                                format!("invalid config {}: {name}: {e}", path.display())
                            })?;
                            Some(parsed)
                        }
                        None => None,
                    };
                    let (given, source) = match (args.$name.clone(), from_file) {
                        (Some(v), _) => (
                            Some(v),
                            args.sources.get(name).copied().unwrap_or(table::Source::Flag),
                        ),
                        (None, Some(v)) => (Some(v), table::Source::File),
                        (None, None) => (None, table::Source::Default),
                    };
                    config.$name = <$resolved as table::Resolve<$parsed>>::resolve(given, config.$name);
                    ($check)(name, &config.$name)?;
                    config.sources.push((name, source));
                )*
                Ok(config)
            }

            /// `config print`: every setting as a line of TOML, with where
            /// its value came from; unset ones commented out.
            pub fn print_lines(&self) -> Vec<String> {
                use table::Shown;
                let source = |name: &str| {
                    self.sources
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or(table::Source::Default, |(_, s)| *s)
                        .as_str()
                };
                let mut out = Vec::new();
                $(
                    let name = stringify!($name);
                    let from = source(name);
                    out.push(match self.$name.shown() {
                        // Computed at start (this host's name, this user's
                        // data directory): commented out, so that a file
                        // made of this output does not pin it for every
                        // host it is copied to.
                        Some(v) if from == table::Source::Default.as_str()
                            && COMPUTED_DEFAULTS.contains(&name) =>
                        {
                            format!("# {name} = {v}  # default, computed at start")
                        }
                        Some(v) => format!("{name} = {v}  # {from}"),
                        None => format!("# {name} is not set"),
                    });
                )*
                out
            }
        }
    };
}

pub(crate) use settings;
