//! Terminal output: colour only on a TTY and never with NO_COLOR, TERM=dumb or `--no-color`, progress bars
//! on a TTY and timestamped lines elsewhere, and the approval prompt.

use std::io::{BufRead, IsTerminal, Write};

/// Decides colour once for the whole process (console's global switch drives every style).
pub fn init_colour(no_color_flag: bool) {
    let enabled = !no_color_flag
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
        && std::io::stdout().is_terminal();
    console::set_colors_enabled(enabled);
    console::set_colors_enabled_stderr(enabled && std::io::stderr().is_terminal());
}

/// `-v`: more detail in messages (the debug form of provider errors), for the whole process.
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, std::sync::atomic::Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writing to stdout failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Its reader went away (`rallyctl plan BIG.toml | head -1`): the command ends quietly, as
    /// ripgrep does, since nobody reads what it would say.
    #[error("stdout was closed")]
    Closed,
    #[error("cannot write to stdout: {0}")]
    Io(std::io::Error),
}

/// Writes to stdout, the one way commands print: a closed pipe is an error to end on, never
/// the panic of `print!`.
pub fn out(text: std::fmt::Arguments<'_>) -> Result<(), OutputError> {
    std::io::stdout()
        .lock()
        .write_fmt(text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => OutputError::Closed,
            _ => OutputError::Io(e),
        })
}

/// A warning on stderr, in the style of every warning rallyctl gives.
pub fn warn(message: &str) {
    eprintln!("{} {message}", console::style("warning:").yellow().bold());
}

/// Appends `markdown` to the file `GITHUB_STEP_SUMMARY` names, when it names one: the job's
/// summary page in GitHub Actions. Appended, never truncated, since the job's earlier steps
/// wrote there too; a file that cannot be written is warned about and fails nothing, since the
/// summary only repeats what the command printed.
pub fn step_summary(markdown: &str) {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        // A line break first: what an earlier step wrote may not end its line.
        .and_then(|mut f| write!(f, "\n{markdown}"));
    if let Err(e) = appended {
        warn(&format!(
            "cannot append the step summary to {} (GITHUB_STEP_SUMMARY): {e}",
            path.display()
        ));
    }
}

/// A message without the Rust debug dump of its error that the AWS SDK appends in parentheses
/// (`... permissions. (ProviderError(ProviderError { source: ... }))`): what a user reads
/// ends before it; `-v` shows it all.
pub fn without_debug_dump(text: &str) -> &str {
    let dump = text.match_indices(" (").map(|(at, _)| at).find(|&at| {
        let rest = &text[at + 2..];
        let name = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        rest.starts_with(|c: char| c.is_ascii_uppercase())
            && (rest[name..].starts_with('(') || rest[name..].starts_with(" {"))
    });
    dump.map_or(text, |at| &text[..at])
}

/// The tail of a failed race's log as shown: Rally colours its console output, and its
/// escape codes are noise in a file or a CI log, so they stay only where colour is shown
/// (`colour`: console's switch for stdout, see [`init_colour`]).
pub fn log_tail(tail: &str, colour: bool) -> std::borrow::Cow<'_, str> {
    if colour {
        tail.into()
    } else {
        console::strip_ansi_codes(tail)
    }
}

pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// What the user answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Yes,
    No,
    /// Ctrl-C at the prompt: the caller unwinds (releasing its lock) and exits 130.
    Interrupted,
}

/// Asks for `yes` like terraform; refuses without a terminal to ask on, naming `skip`, the
/// flag that proceeds without asking. Ctrl-C answers at once, without waiting for Enter.
pub fn confirm(rt: &tokio::runtime::Runtime, question: &str, skip: &str) -> Result<Answer, String> {
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "no terminal to ask for approval on; pass {skip} to proceed without asking"
        ));
    }
    // The signal is caught while the answer is read, so that the caller's locks are released
    // on the way out rather than left behind by a killed process. The handler is in place
    // before the prompt shows: a Ctrl-C the moment it appears would otherwise kill the process.
    rt.block_on(async {
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| format!("cannot wait for the answer: {e}"))?;
        print!("{question}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
        std::io::stdout().flush().ok();
        // A thread of its own, not the runtime's blocking pool: after Ctrl-C the read may
        // still block on the terminal, and is left behind.
        let (tx, read) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut answer = String::new();
            let _ = tx.send(
                std::io::stdin()
                    .lock()
                    .read_line(&mut answer)
                    .map(|_| answer),
            );
        });
        tokio::select! {
            read = read => match read {
                Ok(Ok(answer)) if answer.trim() == "yes" => Ok(Answer::Yes),
                Ok(Ok(_)) => Ok(Answer::No),
                Ok(Err(e)) => Err(format!("cannot read the answer: {e}")),
                Err(e) => Err(format!("cannot read the answer: {e}")),
            },
            _ = interrupt.recv() => {
                println!();
                Ok(Answer::Interrupted)
            }
        }
    })
}

/// A timestamped line for logs when stdout is not a terminal. A closed stdout loses the line
/// but stops nothing: the tests running go on to give their machines back.
pub fn log_line(message: &str) {
    let _ = out(format_args!(
        "{} {message}\n",
        jiff::Timestamp::now().strftime("%H:%M:%S")
    ));
}

/// Live progress of an apply: a spinner line per running test and a bar per suite on a
/// terminal; plain timestamped lines otherwise (CI logs, pipes).
pub struct Progress {
    bars: Option<Bars>,
    /// Whether lines are printed where there are no bars: not for an apply nobody watches.
    lines: bool,
}

struct Bars {
    multi: indicatif::MultiProgress,
    tests: std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
    suites: std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
}

impl Progress {
    pub fn new(interactive: bool) -> Progress {
        Progress {
            bars: interactive.then(|| Bars {
                multi: indicatif::MultiProgress::new(),
                tests: Default::default(),
                suites: Default::default(),
            }),
            lines: true,
        }
    }

    /// Progress nobody watches: the simulation's thousands of applies (its lines would go
    /// around the test harness's capture, straight to the terminal).
    pub fn hidden() -> Progress {
        Progress {
            bars: None,
            lines: false,
        }
    }

    fn line(&self, line: &str) {
        if self.lines {
            log_line(line);
        }
    }

    /// Announces a suite and how many of its tests will run.
    pub fn suite(&self, name: &str, tests: usize) {
        match &self.bars {
            Some(b) => {
                let bar = b.multi.add(indicatif::ProgressBar::new(tests as u64));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "suite {msg:20} [{bar:30}] {pos}/{len} tests  {elapsed}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_message(name.to_owned());
                b.suites
                    .lock()
                    .expect("progress lock")
                    .insert(name.to_owned(), bar);
            }
            None => self.line(&format!(
                "suite {name}: {tests} test{} to run",
                if tests == 1 { "" } else { "s" }
            )),
        }
    }

    pub fn step(&self, test: &str, step: &str) {
        match &self.bars {
            Some(b) => {
                let mut tests = b.tests.lock().expect("progress lock");
                let bar = tests.entry(test.to_owned()).or_insert_with(|| {
                    let bar = b.multi.add(indicatif::ProgressBar::new_spinner());
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "  {spinner} {prefix:30} {msg:12} {elapsed}",
                        )
                        .expect("valid template"),
                    );
                    bar.set_prefix(test.to_owned());
                    bar.enable_steady_tick(std::time::Duration::from_millis(200));
                    bar
                });
                bar.set_message(step.to_owned());
            }
            None => self.line(&format!("{test}: {step}")),
        }
    }

    pub fn finished(&self, suite: &str, test: &str, outcome: &str) {
        match &self.bars {
            Some(b) => {
                if let Some(bar) = b.tests.lock().expect("progress lock").remove(test) {
                    bar.finish_with_message(outcome.to_owned());
                }
                if let Some(bar) = b.suites.lock().expect("progress lock").get(suite) {
                    bar.inc(1);
                }
            }
            None => self.line(&format!("{test}: {outcome}")),
        }
    }

    /// Prints a line without tearing the bars.
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(line);
            }
            None => self.line(line),
        }
    }
}

/// The end-of-apply table: each test's status, instance, time taken and error.
pub fn summary_table(state: &crate::state::State, addresses: &[crate::address::Address]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::ASCII_MARKDOWN)
        .set_header(["test", "status", "instance", "took", "detail"]);
    for address in addresses {
        let Some(r) = state.tests.get(address) else {
            continue;
        };
        let took = match (r.history.first(), r.history.last()) {
            (Some(a), Some(b)) => {
                let secs = b.at.duration_since(a.at).as_secs();
                format!("{}m{:02}s", secs / 60, secs % 60)
            }
            _ => String::new(),
        };
        let detail = match &r.status {
            crate::state::Status::Failed { error, .. } => {
                error.lines().next().unwrap_or("").to_owned()
            }
            _ => String::new(),
        };
        table.add_row([
            address.to_string(),
            r.status.label(),
            r.machine.as_ref().map_or(String::new(), |i| i.id.clone()),
            took,
            detail,
        ]);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    /// The credential warning as this machine gave it (IMDS answering 403): one line that ends
    /// where the SDK's debug dump begins.
    #[test]
    fn the_sdks_debug_dump_is_left_out() {
        let sdk = r#"an error occurred while loading credentials: failed to load IMDS session token: service error: request forbidden: IMDS is disabled or the caller has insufficient permissions. (ProviderError(ProviderError { source: FailedToLoadToken(FailedToLoadToken { source: ServiceError(ServiceError { source: TokenError { kind: Forbidden }, raw: Response { status: StatusCode(403), headers: {"server": "keryx"} } }) }) }))"#;
        insta::assert_snapshot!(super::without_debug_dump(sdk), @"an error occurred while loading credentials: failed to load IMDS session token: service error: request forbidden: IMDS is disabled or the caller has insufficient permissions.");
        let plain = "load credentials (the AWS credential chain (environment, profile, SSO, instance role)): no credentials";
        assert_eq!(super::without_debug_dump(plain), plain);
    }

    #[test]
    fn rally_colours_leave_log_tails_shown_without_colour() {
        let tail = "\x1b[1m[ERROR]\x1b[0m Cannot race. \x1b[31mError in race\x1b[0m\n\x1b[0;32mdone\x1b[0m";
        assert_eq!(
            super::log_tail(tail, false),
            "[ERROR] Cannot race. Error in race\ndone"
        );
        assert_eq!(super::log_tail(tail, true), tail);
    }
}
