//! Plain-text tables for `-o table`: left-aligned columns three spaces apart, no trailing
//! blanks, and optional note lines under a row (the NACKs under a `status` row) that do not
//! widen the columns.

/// Columns sit this many spaces apart (as `kubectl` does, so eyes and `awk` know the shape).
const GAP: usize = 3;

/// Column widths that only grow: a watch prints its rows as they come, each aligned with the
/// ones before it as far as they allow.
#[derive(Debug, Default)]
pub struct Widths {
    widths: Vec<usize>,
    header_printed: bool,
}

impl Widths {
    /// The next rows come under their header again (another table was printed between).
    pub fn reprint_header(&mut self) {
        self.header_printed = false;
    }
}

#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Row>,
}

#[derive(Debug)]
struct Row {
    cells: Vec<String>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(Row {
            cells,
            notes: Vec::new(),
        });
    }

    /// A line printed as-is under the last row.
    pub fn note(&mut self, line: String) {
        if let Some(row) = self.rows.last_mut() {
            row.notes.push(line);
        }
    }

    /// With a first column `header`, `cell` in every row.
    pub fn lead(mut self, header: &str, cell: &str) -> Table {
        self.header.insert(0, header.to_string());
        for row in &mut self.rows {
            row.cells.insert(0, cell.to_string());
        }
        self
    }

    /// The rows (and the header, the first time) padded to `widths`, which grow to fit them.
    pub fn render_growing(&self, widths: &mut Widths) -> String {
        let header = !widths.header_printed;
        let lines = std::iter::once(&self.header)
            .filter(|_| header)
            .chain(self.rows.iter().map(|r| &r.cells));
        for cells in lines.clone() {
            if widths.widths.len() < cells.len() {
                widths.widths.resize(cells.len(), 0);
            }
            for (width, cell) in widths.widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        if header {
            out.push_str(&line(&widths.widths, &self.header));
            widths.header_printed = true;
        }
        for row in &self.rows {
            out.push_str(&line(&widths.widths, &row.cells));
            for note in &row.notes {
                out.push_str(note);
                out.push('\n');
            }
        }
        out
    }

    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(|r| r.cells.len())
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for cells in std::iter::once(&self.header).chain(self.rows.iter().map(|r| &r.cells)) {
            for (width, cell) in widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = line(&widths, &self.header);
        for row in &self.rows {
            out.push_str(&line(&widths, &row.cells));
            for note in &row.notes {
                out.push_str(note);
                out.push('\n');
            }
        }
        out
    }
}

/// One row padded to `widths`, ending in a newline.
fn line(widths: &[usize], cells: &[String]) -> String {
    let mut text = String::new();
    for (cell, width) in cells.iter().zip(widths) {
        text.push_str(cell);
        text.extend(std::iter::repeat_n(' ', width - cell.chars().count() + GAP));
    }
    let mut text = text.trim_end().to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_widths_align_rows_printed_one_at_a_time() {
        let mut widths = Widths::default();
        let one = |name: &str| {
            let mut t = Table::new(&["NAME", "VERSION"]);
            t.row(vec![name.to_string(), "3".to_string()]);
            t.lead("EVENT", "ADDED")
        };
        assert_eq!(
            one("echo").render_growing(&mut widths),
            "EVENT   NAME   VERSION\nADDED   echo   3\n"
        );
        assert_eq!(one("ab").render_growing(&mut widths), "ADDED   ab     3\n");
        assert_eq!(
            one("payments").render_growing(&mut widths),
            "ADDED   payments   3\n"
        );
    }

    fn cells(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn columns_align_on_the_widest_cell_without_trailing_blanks() {
        let mut t = Table::new(&["NAME", "NAMESPACE", "VERSION"]);
        t.row(cells(&["midtrans", "payments", "41"]));
        t.row(cells(&["a-much-longer-name", "mrg", "7"]));
        assert_eq!(
            t.render(),
            "NAME                 NAMESPACE   VERSION\n\
             midtrans             payments    41\n\
             a-much-longer-name   mrg         7\n"
        );
    }

    #[test]
    fn empty_last_cells_leave_no_trailing_blanks() {
        let mut t = Table::new(&["REVISION", "OP", "BY"]);
        t.row(cells(&["12", "delete", ""]));
        assert_eq!(t.render(), "REVISION   OP       BY\n12         delete\n");
    }

    #[test]
    fn notes_follow_their_row_and_do_not_widen_columns() {
        let mut t = Table::new(&["RESOURCE", "APPLIED"]);
        t.row(cells(&["UpstreamPolicy/p/a", "37/40"]));
        t.note("  pod checkout-1 at version 40: a very long reason that is wider".into());
        t.row(cells(&["ServicePolicy/p/b", "40/40"]));
        assert_eq!(
            t.render(),
            "RESOURCE             APPLIED\n\
             UpstreamPolicy/p/a   37/40\n  \
             pod checkout-1 at version 40: a very long reason that is wider\n\
             ServicePolicy/p/b    40/40\n"
        );
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new(&["BY", "AT"]);
        t.row(cells(&["zoë", "now"]));
        assert_eq!(t.render(), "BY    AT\nzoë   now\n");
    }
}
