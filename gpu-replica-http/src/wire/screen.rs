//! The web terminal's messages (`GET /api/v1/replicaSet/{name}/screen`): the screen as the
//! server's emulator draws it, in runs of cells of one style, with short keys (an update
//! streams many of them).

use gpu_replica_core::screen::{Color, Cursor, Run};
use gpu_replica_core::{ScreenEvent, ScreenUpdate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The WebSocket subprotocol of the web terminal; the server picks it.
pub const SCREEN_PROTOCOL: &str = "gpu-replica";

/// A browser cannot set headers on a WebSocket: it may send its token as a second
/// subprotocol, this prefix followed by the token's bytes in lowercase hex.
pub const TOKEN_PROTOCOL_PREFIX: &str = "gpu-replica.bearer.";

/// What to open or attach to, in the query string.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ScreenQuery {
    /// A session to attach to again (the id its `session` message gave); when it ended, or is
    /// not the caller's, a new one is opened.
    pub session: Option<String>,
    /// Terminal rows (default 24).
    pub rows: Option<u16>,
    /// Terminal columns (default 80).
    pub cols: Option<u16>,
    /// For a new session, the program and its arguments as a JSON array; left out: `bash` if
    /// the image has it, else `sh`.
    pub cmd: Option<String>,
}

/// A control message from the page, as JSON text (binary messages are the program's input:
/// keys and pastes, as the terminal would send them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ScreenControl {
    /// The page's terminal has a new size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// End the program now (the page closed the terminal for good; a page that merely goes
    /// leaves the session to be attached again).
    Close,
}

/// A message from the server, as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ScreenMessage {
    /// First: the session's id (to attach again after a reload or a dropped connection), and
    /// whether this attached to a session that was already open.
    Session {
        /// The session's id.
        id: String,
        /// Whether the session was open already.
        reattached: bool,
    },
    /// The screen changed: every row (`full`) or the changed ones.
    Screen(#[schema(inline)] ScreenUpdateView),
    /// Last: the program ended with this code (-1 when Docker did not say, or the server
    /// ended it).
    Exit {
        /// The exit code.
        code: i64,
    },
}

/// A screen update.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScreenUpdateView {
    /// Whether every row is here (the first update, and after a resize).
    pub full: bool,
    /// Rows of the screen.
    pub rows: u16,
    /// Columns of the screen.
    pub cols: u16,
    /// The rows that changed.
    pub lines: Vec<ScreenLineView>,
    /// The cursor.
    pub cursor: CursorView,
    /// The window title the program set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// Whether the program is on the alternate screen (full-screen programs are).
    pub alternate: bool,
    /// Whether arrow keys are sent in application mode (`ESC O A` rather than `ESC [ A`).
    pub app_cursor: bool,
    /// Whether a paste is sent between `ESC [200~` and `ESC [201~`.
    pub bracketed_paste: bool,
}

/// One row of the screen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct ScreenLineView {
    /// The row, from 0 at the top.
    pub row: u16,
    /// Its cells, left to right, in runs of one style.
    pub runs: Vec<RunView>,
}

/// Neighbouring cells of one style.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct RunView {
    /// The text (an empty cell is a space; a wide character stands for two cells).
    #[serde(rename = "t")]
    pub text: String,
    /// Foreground: 0–255 an indexed color, 16777216 + 0xRRGGBB a 24-bit one; absent the
    /// default.
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub fg: Option<u32>,
    /// Background, as `f`.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub bg: Option<u32>,
    /// Attributes, added up: 1 bold, 2 dim, 4 italic, 8 underline, 16 inverse; absent none.
    #[serde(rename = "a", default, skip_serializing_if = "is_zero")]
    pub attrs: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Where the cursor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct CursorView {
    /// Row, from 0.
    pub row: u16,
    /// Column, from 0.
    pub col: u16,
    /// Whether it shows.
    pub visible: bool,
}

fn color(color: Color) -> Option<u32> {
    match color {
        Color::Default => None,
        Color::Indexed(i) => Some(i.into()),
        Color::Rgb(r, g, b) => {
            Some((1 << 24) | (u32::from(r) << 16) | (u32::from(g) << 8) | u32::from(b))
        }
    }
}

impl From<&Run> for RunView {
    fn from(run: &Run) -> RunView {
        let s = run.style;
        let attrs = [s.bold, s.dim, s.italic, s.underline, s.inverse]
            .iter()
            .enumerate()
            .filter(|(_, on)| **on)
            .fold(0u8, |sum, (bit, _)| sum | (1 << bit));
        RunView {
            text: run.text.clone(),
            fg: color(s.fg),
            bg: color(s.bg),
            attrs,
        }
    }
}

impl From<Cursor> for CursorView {
    fn from(c: Cursor) -> CursorView {
        CursorView {
            row: c.row,
            col: c.col,
            visible: c.visible,
        }
    }
}

impl From<ScreenUpdate> for ScreenUpdateView {
    fn from(u: ScreenUpdate) -> ScreenUpdateView {
        ScreenUpdateView {
            full: u.full,
            rows: u.rows,
            cols: u.cols,
            lines: u
                .lines
                .iter()
                .map(|(row, runs)| ScreenLineView {
                    row: *row,
                    runs: runs.iter().map(RunView::from).collect(),
                })
                .collect(),
            cursor: u.cursor.into(),
            title: u.title,
            alternate: u.alternate,
            app_cursor: u.application_cursor,
            bracketed_paste: u.bracketed_paste,
        }
    }
}

impl From<ScreenEvent> for ScreenMessage {
    fn from(event: ScreenEvent) -> ScreenMessage {
        match event {
            ScreenEvent::Update(update) => ScreenMessage::Screen(update.into()),
            ScreenEvent::Exit(code) => ScreenMessage::Exit { code },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_replica_core::screen::Emulator;

    #[test]
    fn an_update_is_compact_json_with_colors_and_attributes() {
        let mut terminal = Emulator::new(2, 6);
        terminal.feed(b"\x1b[1;4;38;2;255;0;1mab\x1b[0;44mc");
        let update = terminal.frame().update_from(None).unwrap();
        let message = ScreenMessage::from(ScreenEvent::Update(update));
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["type"], "screen");
        assert_eq!(json["full"], true);
        assert_eq!(
            json["lines"][0],
            serde_json::json!({"row": 0, "runs": [
                {"t": "ab", "f": (1 << 24) | 0xff0001, "a": 9},
                {"t": "c", "b": 4},
                {"t": "   "},
            ]})
        );
        assert_eq!(
            json["cursor"],
            serde_json::json!({"row": 0, "col": 3, "visible": true})
        );
        assert!(json.get("title").is_none());
        let back: ScreenMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back, message);
    }
}
