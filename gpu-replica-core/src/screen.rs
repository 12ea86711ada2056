//! A terminal emulated on the server, for the console's web terminal: a program's output goes
//! through a `vt100` parser here, and a page gets the resulting screen, a full one first and
//! then only the rows that changed. The page draws text, nothing more, so it needs no terminal
//! emulator of its own, and the screen outlives the page (a reload finds it intact).
//!
//! This file holds the emulator and the screen's frames and their differences; the sessions
//! that own emulators are in `engine/screens.rs`, the operations in `ops/screen.rs`.

use std::num::NonZeroU16;
use std::time::Duration;

/// How web terminals (screen sessions) are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreenPolicy {
    /// How long a session with no page attached stays, its program running, before the
    /// program is ended and the session forgotten (default 10 minutes).
    pub keep: Duration,
    /// Sessions one user may hold open at once (default 8).
    pub per_user: usize,
}

impl Default for ScreenPolicy {
    fn default() -> ScreenPolicy {
        ScreenPolicy {
            keep: Duration::from_secs(600),
            per_user: 8,
        }
    }
}

/// Rows and columns are kept within this, whatever a page asks for.
pub const MAX_SIDE: u16 = 1000;

/// The private OSC a session's program announces its process id with (`ESC ] 7770 ; PID BEL`),
/// before anything else it writes; the emulator keeps the first and draws nothing of it.
pub const PID_OSC: &str = "7770";

/// A cell's color.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Color {
    /// The terminal's default.
    #[default]
    Default,
    /// One of the 256 indexed colors (0–15 the named ones).
    Indexed(u8),
    /// A 24-bit color.
    Rgb(u8, u8, u8),
}

impl From<vt100::Color> for Color {
    fn from(color: vt100::Color) -> Color {
        match color {
            vt100::Color::Default => Color::Default,
            vt100::Color::Idx(i) => Color::Indexed(i),
            vt100::Color::Rgb(r, g, b) => Color::Rgb(r, g, b),
        }
    }
}

/// How a run of cells is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// Foreground color.
    pub fg: Color,
    /// Background color.
    pub bg: Color,
    /// Bold.
    pub bold: bool,
    /// Dim (faint).
    pub dim: bool,
    /// Italic.
    pub italic: bool,
    /// Underlined.
    pub underline: bool,
    /// Foreground and background swapped.
    pub inverse: bool,
}

impl Style {
    fn of(cell: &vt100::Cell) -> Style {
        Style {
            fg: cell.fgcolor().into(),
            bg: cell.bgcolor().into(),
            bold: cell.bold(),
            dim: cell.dim(),
            italic: cell.italic(),
            underline: cell.underline(),
            inverse: cell.inverse(),
        }
    }
}

/// Neighbouring cells of one style, as text (an empty cell is a space; a wide character
/// stands for its two cells).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The cells' characters.
    pub text: String,
    /// How they are drawn.
    pub style: Style,
}

/// Where the cursor is, and whether it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Row, from 0 at the top.
    pub row: u16,
    /// Column, from 0 at the left.
    pub col: u16,
    /// Whether the program shows it.
    pub visible: bool,
}

/// The whole screen at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
    /// Each row's runs, top to bottom.
    pub lines: Vec<Vec<Run>>,
    /// The cursor.
    pub cursor: Cursor,
    /// The window title the program set (OSC 0 or 2).
    pub title: String,
    /// Whether the program draws on the alternate screen (full-screen programs do).
    pub alternate: bool,
    /// Whether arrow keys are to be sent in application mode (`ESC O A` instead of `ESC [ A`).
    pub application_cursor: bool,
    /// Whether a paste is to be bracketed (`ESC [200~` … `ESC [201~`).
    pub bracketed_paste: bool,
}

/// What a page needs to bring its screen from one frame to the next: all rows (`full`) or the
/// changed ones, and the cursor, title and modes as they are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreenUpdate {
    /// Whether every row is here (the first update, and after a resize).
    pub full: bool,
    /// Rows of the screen.
    pub rows: u16,
    /// Columns of the screen.
    pub cols: u16,
    /// The rows that changed, by index, with their runs.
    pub lines: Vec<(u16, Vec<Run>)>,
    /// The cursor.
    pub cursor: Cursor,
    /// The window title.
    pub title: String,
    /// Whether the alternate screen is on.
    pub alternate: bool,
    /// Whether arrow keys go in application mode.
    pub application_cursor: bool,
    /// Whether a paste is bracketed.
    pub bracketed_paste: bool,
}

impl Frame {
    /// What brings a page showing `before` (nothing yet: `None`) to this frame; `None` when
    /// nothing it draws changed.
    pub fn update_from(&self, before: Option<&Frame>) -> Option<ScreenUpdate> {
        let full = before.is_none_or(|b| (b.rows, b.cols) != (self.rows, self.cols));
        let lines: Vec<(u16, Vec<Run>)> = self
            .lines
            .iter()
            .enumerate()
            .filter(|(i, line)| full || before.and_then(|b| b.lines.get(*i)) != Some(line))
            .map(|(i, line)| (i as u16, line.clone()))
            .collect();
        let same_state = before.is_some_and(|b| {
            b.cursor == self.cursor
                && b.title == self.title
                && b.alternate == self.alternate
                && b.application_cursor == self.application_cursor
                && b.bracketed_paste == self.bracketed_paste
        });
        if !full && lines.is_empty() && same_state {
            return None;
        }
        Some(ScreenUpdate {
            full,
            rows: self.rows,
            cols: self.cols,
            lines,
            cursor: self.cursor,
            title: self.title.clone(),
            alternate: self.alternate,
            application_cursor: self.application_cursor,
            bracketed_paste: self.bracketed_paste,
        })
    }

    /// The screen's text, rows joined by newlines, trailing spaces of each row left out.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|line| {
                let row: String = line.iter().map(|r| r.text.as_str()).collect();
                row.trim_end().to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What the parser tells besides the screen: the title, and the answers a program asked the
/// terminal for (cursor position, device attributes), which go back to its input.
#[derive(Default)]
struct Listener {
    title: String,
    replies: Vec<u8>,
    pid: Option<u32>,
}

impl vt100::Callbacks for Listener {
    fn set_window_title(&mut self, _: &mut vt100::Screen, title: &[u8]) {
        self.title = String::from_utf8_lossy(title).into_owned();
    }

    fn set_window_icon_name(&mut self, _: &mut vt100::Screen, name: &[u8]) {
        // OSC 0 sets both; a program that sets only the icon name names the window too.
        if self.title.is_empty() {
            self.title = String::from_utf8_lossy(name).into_owned();
        }
    }

    fn unhandled_osc(&mut self, _: &mut vt100::Screen, params: &[&[u8]]) {
        if let [code, pid] = params {
            if *code == PID_OSC.as_bytes() && self.pid.is_none() {
                self.pid = std::str::from_utf8(pid).ok().and_then(|p| p.parse().ok());
            }
        }
    }

    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        _i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        let first = params.first().and_then(|p| p.first()).copied().unwrap_or(0);
        let reply = match (i1, c, first) {
            // Device status report: "OK", and where the cursor is (1-based).
            (None, 'n', 5) => "\x1b[0n".to_string(),
            (None, 'n', 6) => {
                let (row, col) = screen.cursor_position();
                format!("\x1b[{};{}R", row + 1, col + 1)
            }
            // Device attributes: a VT220-ish terminal, as most emulators answer.
            (None, 'c', 0) => "\x1b[?62;22c".to_string(),
            (Some(b'>'), 'c', 0) => "\x1b[>1;10;0c".to_string(),
            _ => return,
        };
        self.replies.extend_from_slice(reply.as_bytes());
    }
}

/// A terminal of rows × columns that a program's output is fed through.
pub struct Emulator {
    parser: vt100::Parser<Listener>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (rows, cols) = self.size();
        f.debug_struct("Emulator")
            .field("rows", &rows)
            .field("cols", &cols)
            .finish()
    }
}

fn side(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n.clamp(1, MAX_SIDE)).unwrap_or(NonZeroU16::MIN)
}

impl Emulator {
    /// A blank terminal of `rows` × `cols` (each kept within 1..=[`MAX_SIDE`]).
    pub fn new(rows: u16, cols: u16) -> Emulator {
        Emulator {
            parser: vt100::Parser::new_with_callbacks(
                side(rows),
                side(cols),
                0,
                Listener::default(),
            ),
        }
    }

    /// Takes the program's output; returns what the program asked the terminal to answer
    /// (to be written to its input), usually nothing.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.parser.process(bytes);
        std::mem::take(&mut self.parser.callbacks_mut().replies)
    }

    /// Gives the terminal `rows` × `cols` (each kept within 1..=[`MAX_SIDE`]).
    pub fn resize(&mut self, rows: u16, cols: u16) {
        self.parser.set_size(side(rows), side(cols));
    }

    /// Rows and columns.
    pub fn size(&self) -> (u16, u16) {
        let (rows, cols) = self.parser.screen().size();
        (rows.get(), cols.get())
    }

    /// The process id the program announced first ([`PID_OSC`]), if it did.
    pub fn program_pid(&self) -> Option<u32> {
        self.parser.callbacks().pid
    }

    /// The screen as it is now.
    pub fn frame(&self) -> Frame {
        let screen = self.parser.screen();
        let (rows, cols) = self.size();
        let lines = (0..rows)
            .map(|row| {
                let mut runs: Vec<Run> = Vec::new();
                for col in 0..cols {
                    let Some(cell) = screen.cell(row, col) else {
                        continue;
                    };
                    if cell.is_wide_continuation() {
                        continue;
                    }
                    let style = Style::of(cell);
                    let text = if cell.has_contents() {
                        cell.contents()
                    } else {
                        " "
                    };
                    match runs.last_mut() {
                        Some(run) if run.style == style => run.text.push_str(text),
                        _ => runs.push(Run {
                            text: text.to_string(),
                            style,
                        }),
                    }
                }
                runs
            })
            .collect();
        let (row, col) = screen.cursor_position();
        Frame {
            rows,
            cols,
            lines,
            cursor: Cursor {
                row,
                col,
                visible: !screen.hide_cursor(),
            },
            title: self.parser.callbacks().title.clone(),
            alternate: screen.alternate_screen(),
            application_cursor: screen.application_cursor(),
            bracketed_paste: screen.bracketed_paste(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(rows: u16, cols: u16, output: &str) -> Emulator {
        let mut terminal = Emulator::new(rows, cols);
        terminal.feed(output.as_bytes());
        terminal
    }

    #[test]
    fn the_first_update_has_every_row_and_the_cursor() {
        let frame = fed(3, 10, "hello\r\nworld").frame();
        let update = frame.update_from(None).unwrap();
        assert!(update.full);
        assert_eq!((update.rows, update.cols), (3, 10));
        assert_eq!(update.lines.len(), 3);
        assert_eq!(update.lines[0].1[0].text, "hello     ");
        assert_eq!(update.lines[2].1[0].text, " ".repeat(10));
        assert_eq!(
            update.cursor,
            Cursor {
                row: 1,
                col: 5,
                visible: true
            }
        );
        assert_eq!(frame.text(), "hello\nworld\n");
    }

    #[test]
    fn a_later_update_sends_only_the_rows_that_changed() {
        let mut terminal = fed(4, 8, "one\r\ntwo\r\n");
        let before = terminal.frame();
        terminal.feed(b"three");
        let after = terminal.frame();
        let update = after.update_from(Some(&before)).unwrap();
        assert!(!update.full);
        let rows: Vec<u16> = update.lines.iter().map(|(i, _)| *i).collect();
        assert_eq!(rows, vec![2]);
        assert_eq!(update.lines[0].1[0].text, "three   ");
        // Nothing drawn changed: no update at all.
        assert_eq!(after.update_from(Some(&after.clone())), None);
    }

    #[test]
    fn a_cursor_move_alone_is_an_update_without_rows() {
        let mut terminal = fed(2, 5, "ab");
        let before = terminal.frame();
        terminal.feed(b"\x1b[1;1H");
        let update = terminal.frame().update_from(Some(&before)).unwrap();
        assert!(update.lines.is_empty());
        assert_eq!((update.cursor.row, update.cursor.col), (0, 0));
    }

    #[test]
    fn runs_split_where_the_style_changes_and_carry_colors() {
        let frame = fed(
            1,
            12,
            "a\x1b[1;31mbc\x1b[0;38;5;200;48;2;1;2;3mde\x1b[7mf\x1b[0m",
        )
        .frame();
        let runs = &frame.lines[0];
        let texts: Vec<&str> = runs.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, vec!["a", "bc", "de", "f", "      "]);
        assert_eq!(runs[0].style, Style::default());
        assert!(runs[1].style.bold);
        assert_eq!(runs[1].style.fg, Color::Indexed(1));
        assert_eq!(runs[2].style.fg, Color::Indexed(200));
        assert_eq!(runs[2].style.bg, Color::Rgb(1, 2, 3));
        assert!(runs[3].style.inverse);
    }

    #[test]
    fn a_resize_makes_the_next_update_full() {
        let mut terminal = fed(2, 4, "x");
        let before = terminal.frame();
        terminal.resize(3, 6);
        let update = terminal.frame().update_from(Some(&before)).unwrap();
        assert!(update.full);
        assert_eq!((update.rows, update.cols, update.lines.len()), (3, 6, 3));
        // Sizes are kept sane whatever is asked.
        terminal.resize(0, 60000);
        assert_eq!(terminal.size(), (1, MAX_SIDE));
    }

    #[test]
    fn full_screen_programs_modes_and_title_are_reported() {
        let mut terminal = fed(
            3,
            10,
            "\x1b]2;vi file\x07\x1b[?1049h\x1b[?1h\x1b[?2004h\x1b[?25l",
        );
        let frame = terminal.frame();
        assert_eq!(frame.title, "vi file");
        assert!(frame.alternate && frame.application_cursor && frame.bracketed_paste);
        assert!(!frame.cursor.visible);
        terminal.feed(b"\x1b[?1049l\x1b[?1l\x1b[?25h");
        let back = terminal.frame();
        assert!(!back.alternate && !back.application_cursor && back.cursor.visible);
        let update = back.update_from(Some(&frame)).unwrap();
        assert!(!update.alternate);
    }

    #[test]
    fn a_program_asking_where_the_cursor_is_gets_an_answer() {
        let mut terminal = Emulator::new(5, 20);
        assert_eq!(terminal.feed(b"abc\x1b[6n"), b"\x1b[1;4R");
        assert_eq!(terminal.feed(b"\x1b[5n"), b"\x1b[0n");
        assert!(!terminal.feed(b"\x1b[c").is_empty());
        assert!(terminal.feed(b"plain").is_empty());
    }

    #[test]
    fn the_programs_pid_is_taken_from_its_first_announcement_and_not_drawn() {
        let mut terminal = Emulator::new(2, 10);
        terminal.feed(b"\x1b]7770;42\x07$ ");
        terminal.feed(b"\x1b]7770;1\x07");
        assert_eq!(terminal.program_pid(), Some(42));
        assert_eq!(terminal.frame().text(), "$\n");
    }

    #[test]
    fn a_wide_character_stands_for_its_two_cells() {
        let frame = fed(1, 4, "界a").frame();
        assert_eq!(frame.lines[0][0].text, "界a ");
    }
}
