//! A tiny table renderer for terminal output: a header, padded columns, long
//! cells cut with an ellipsis, no trailing spaces.
//!
//! Widths count characters, not terminal cells; wide scripts may misalign,
//! which is acceptable for operator output and keeps this dependency-free.

/// Space between columns.
const GAP: &str = "  ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    max: Vec<Option<usize>>,
    align: Vec<Align>,
}

/// One line of `s` at most `max` characters long: runs of whitespace
/// (including newlines in SQL) become one space, and a cut ends with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    let flat = one_line(s);
    if flat.chars().count() <= max {
        return flat;
    }
    if max == 0 {
        return String::new();
    }
    let mut cut: String = flat.chars().take(max - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// `s` with every run of whitespace (including newlines) turned into one space.
fn one_line(s: &str) -> String {
    let mut flat = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !flat.is_empty() {
            flat.push(' ');
        }
        flat.push_str(word);
    }
    flat
}

impl Table {
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        let n = headers.len();
        Table {
            headers,
            rows: Vec::new(),
            max: vec![None; n],
            align: vec![Align::Left; n],
        }
    }

    /// Caps column `col` at `width` characters; longer cells are cut.
    pub fn max_width(mut self, col: usize, width: usize) -> Self {
        if let Some(m) = self.max.get_mut(col) {
            *m = Some(width.max(1));
        }
        self
    }

    /// Right-aligns column `col` (numbers read better that way).
    pub fn align_right(mut self, col: usize) -> Self {
        if let Some(a) = self.align.get_mut(col) {
            *a = Align::Right;
        }
        self
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// The table as text, one line per row after the header, each ending in `\n`.
    pub fn render(&self) -> String {
        let fit = |col: usize, cell: &str| match self.max[col] {
            Some(max) => truncate(cell, max),
            None => one_line(cell),
        };
        let header: Vec<String> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| fit(i, h))
            .collect();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().enumerate().map(|(i, c)| fit(i, c)).collect())
            .collect();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                std::iter::once(&header)
                    .chain(&rows)
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in std::iter::once(&header).chain(&rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str(GAP);
                }
                let pad = widths[i] - cell.chars().count();
                match self.align[i] {
                    Align::Left => {
                        text.push_str(cell);
                        text.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        text.extend(std::iter::repeat_n(' ', pad));
                        text.push_str(cell);
                    }
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(table: &Table, expected: &str) {
        assert_eq!(table.render(), expected);
    }

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let mut t = Table::new(["ID", "NAME", "N"]).align_right(2);
        t.row(["1", "alice", "3"]);
        t.row(["22", "bo", "12"]);
        check(&t, "ID  NAME    N\n1   alice   3\n22  bo     12\n");
    }

    #[test]
    fn no_trailing_spaces_even_with_an_empty_last_cell() {
        let mut t = Table::new(["A", "B"]);
        t.row(["x"]);
        t.row(["y", "long"]);
        for line in t.render().lines() {
            assert_eq!(line, line.trim_end());
        }
        check(&t, "A  B\nx\ny  long\n");
    }

    #[test]
    fn long_cells_are_cut_with_an_ellipsis() {
        let mut t = Table::new(["SQL", "X"]).max_width(0, 10);
        t.row(["SELECT *\n  FROM users WHERE id = 1", "y"]);
        check(&t, "SQL        X\nSELECT *…  y\n");
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("héllo wörld", 7), "héllo…");
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a\tb\n\nc", 10), "a b c");
        assert_eq!(truncate("abc", 1), "…");
        assert_eq!(truncate("abc", 0), "");
    }
}
