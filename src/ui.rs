//! Terminal output: colour only on a TTY and never with NO_COLOR or `--no-color`, progress bars
//! on a TTY and timestamped lines elsewhere, and the approval prompt.

use std::io::{BufRead, IsTerminal, Write};

/// Decides colour once for the whole process (console's global switch drives every style).
pub fn init_colour(no_color_flag: bool) {
    let enabled = !no_color_flag
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    console::set_colors_enabled(enabled);
    console::set_colors_enabled_stderr(enabled && std::io::stderr().is_terminal());
}

pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// Asks for `yes` like terraform; refuses without a terminal to ask on.
pub fn confirm(question: &str) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err("no terminal to ask for approval on; pass --auto-approve to proceed without asking".into());
    }
    print!("{question}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    std::io::stdout().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok(answer.trim() == "yes")
}

/// A timestamped line for logs when stdout is not a terminal.
pub fn log_line(message: &str) {
    println!("{} {message}", jiff::Timestamp::now().strftime("%H:%M:%S"));
}
