//! Bar charts for the benchmarks' SVG files, drawn with plotters: each panel has its axes
//! described with their units and, beside the plot, a legend that names every colour in it.
//! Text is written as SVG `<text>` (no font files are read: plotters' `ttf` feature is off).

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{SegmentValue, SegmentedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordusize;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Colours that stay apart from each other (Paul Tol's "bright" and "muted" schemes).
pub const PALETTE: [RGBColor; 12] = [
    RGBColor(0x44, 0x77, 0xaa),
    RGBColor(0xee, 0x66, 0x77),
    RGBColor(0x22, 0x88, 0x33),
    RGBColor(0xcc, 0xbb, 0x44),
    RGBColor(0x66, 0xcc, 0xee),
    RGBColor(0xaa, 0x33, 0x77),
    RGBColor(0xbb, 0xbb, 0xbb),
    RGBColor(0xee, 0x77, 0x33),
    RGBColor(0x33, 0x22, 0x88),
    RGBColor(0x44, 0xaa, 0x99),
    RGBColor(0x88, 0x22, 0x55),
    RGBColor(0x99, 0x99, 0x33),
];

/// One colour of a panel: a value per category.
pub struct Series {
    pub name: String,
    pub colour: RGBColor,
    pub values: Vec<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bars {
    /// One bar per category, the series stacked in order from the bottom; the total on top.
    Stacked,
    /// The series side by side within each category.
    Grouped,
    /// Side by side on a logarithmic value axis, for values that span decades (latencies).
    GroupedLogScale,
}

impl Bars {
    fn side_by_side(self) -> bool {
        matches!(self, Bars::Grouped | Bars::GroupedLogScale)
    }
}

/// One chart: categories along x, series as colours.
pub struct Panel {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub legend_title: String,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    pub bars: Bars,
}

const FONT: &str = "sans-serif";
const TITLE_SIZE: u32 = 17;
const LABEL_SIZE: u32 = 13;
/// Wide enough for 13-pixel sans-serif text: about 0.6 em per character, with room to spare.
const CHAR_WIDTH: u32 = 8;
const SWATCH: i32 = 12;
const LINE: i32 = 20;
/// Under a stacked panel's legend: what the number above a bar is (a total of medians need not
/// be the median of the totals, e.g. `bench dispatch`'s per-packet total).
const STACK_NOTE: [&str; 2] = ["number above a bar:", "sum of the parts shown"];

/// `panels` laid out in `columns` columns, each panel `panel_size` pixels, as an SVG document.
pub fn svg(panels: &[Panel], columns: usize, panel_size: (u32, u32)) -> Result<String> {
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (panel_size.0 * columns as u32, panel_size.1 * rows as u32);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        // One legend width for every panel, so that panels above each other line up.
        let longest = panels
            .iter()
            .flat_map(|p| p.series.iter().map(|s| s.name.len()).chain([p.legend_title.len()]))
            .chain(STACK_NOTE.iter().filter(|_| panels.iter().any(|p| p.bars == Bars::Stacked)).map(|line| line.len()))
            .max()
            .unwrap_or(0);
        let legend_width = (longest as u32 + 2) * CHAR_WIDTH + SWATCH as u32 + 16;
        for (panel, area) in panels.iter().zip(root.split_evenly((rows, columns))) {
            draw_panel(panel, &area, legend_width)?;
        }
        root.present().map_err(plot_error)?;
    }
    Ok(out)
}

fn plot_error<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow!("drawing a chart: {error:?}")
}

fn draw_panel<DB: DrawingBackend>(
    panel: &Panel,
    area: &DrawingArea<DB, plotters::coord::Shift>,
    legend_width: u32,
) -> Result<()> {
    let (plot_area, legend_area) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(legend_width));
    let categories = panel.categories.len().max(1);
    let top = match panel.bars {
        Bars::Stacked => (0..categories).map(|c| panel.series.iter().map(|s| value(s, c)).sum()).fold(0.0, f64::max),
        Bars::Grouped | Bars::GroupedLogScale => {
            panel.series.iter().flat_map(|s| s.values.iter().copied()).fold(0.0, f64::max)
        }
    };
    let mut builder = ChartBuilder::on(&plot_area);
    builder.caption(&panel.title, (FONT, TITLE_SIZE)).margin(12).x_label_area_size(48).y_label_area_size(78);
    let x = (0..categories - 1).into_segmented();
    if panel.bars == Bars::GroupedLogScale {
        // Whole decades around the values, the lowest below the smallest value: bars rise from it.
        let smallest =
            panel.series.iter().flat_map(|s| s.values.iter().copied()).filter(|v| *v > 0.0).fold(top, f64::min);
        let bottom = if smallest > 0.0 { 10f64.powf(smallest.log10().ceil() - 1.0) } else { 1.0 };
        let top = if top > bottom { 10f64.powf((top * 1.12).log10().ceil()) } else { bottom * 10.0 };
        let chart = builder.build_cartesian_2d(x, (bottom..top).log_scale()).map_err(plot_error)?;
        draw_bars(panel, chart, bottom)?;
    } else {
        // Headroom for the totals written above stacked bars.
        let top = if top > 0.0 { top * 1.12 } else { 1.0 };
        let chart = builder.build_cartesian_2d(x, 0.0..top).map_err(plot_error)?;
        draw_bars(panel, chart, 0.0)?;
    }
    draw_legend(panel, &legend_area)
}

/// The axes and bars of `panel` on `chart`, bars rising from `floor`.
fn draw_bars<DB, Y>(
    panel: &Panel,
    mut chart: ChartContext<'_, DB, Cartesian2d<SegmentedCoord<RangedCoordusize>, Y>>,
    floor: f64,
) -> Result<()>
where
    DB: DrawingBackend,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let categories = panel.categories.len().max(1);
    let label = |index: usize| panel.categories.get(index).cloned().unwrap_or_default();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(categories)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(index) => label(*index),
            _ => String::new(),
        })
        .y_label_formatter(&|y| thousands(*y))
        .x_desc(&panel.x_desc)
        .y_desc(&panel.y_desc)
        .label_style((FONT, LABEL_SIZE))
        .axis_desc_style((FONT, LABEL_SIZE + 1))
        .draw()
        .map_err(plot_error)?;
    // Pixels per category: bars are placed inside their category by pixel margins.
    let slot = chart.plotting_area().dim_in_pixel().0 / categories as u32;
    let gap = slot / 6;
    let series_count = panel.series.len().max(1) as u32;
    let bar = (slot - 2 * gap) / if panel.bars.side_by_side() { series_count } else { 1 };
    let edge = |index: usize| SegmentValue::Exact(index);
    let mut rectangles = Vec::new();
    for category in 0..categories {
        let mut base = floor;
        for (k, series) in panel.series.iter().enumerate() {
            let v = value(series, category);
            let (low, high, left) = match panel.bars {
                Bars::Stacked => (base, base + v, gap),
                Bars::Grouped | Bars::GroupedLogScale => (floor, v.max(floor), gap + k as u32 * bar),
            };
            base = high;
            let mut rectangle =
                Rectangle::new([(edge(category), low), (edge(category + 1), high)], series.colour.filled());
            rectangle.set_margin(0, 0, left, slot.saturating_sub(left + bar));
            rectangles.push(rectangle);
        }
    }
    chart.draw_series(rectangles).map_err(plot_error)?;
    if panel.bars == Bars::Stacked {
        let style = TextStyle::from((FONT, LABEL_SIZE).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series((0..categories).map(|c| {
                let total: f64 = panel.series.iter().map(|s| value(s, c)).sum();
                Text::new(thousands(total), (SegmentValue::CenterOf(c), total), style.clone())
            }))
            .map_err(plot_error)?;
    }
    Ok(())
}

/// The legend, top to bottom in the order the eye meets the bars: a stack's top first.
fn draw_legend<DB: DrawingBackend>(panel: &Panel, area: &DrawingArea<DB, plotters::coord::Shift>) -> Result<()> {
    let mut entries: Vec<&Series> = panel.series.iter().collect();
    if panel.bars == Bars::Stacked {
        entries.reverse();
    }
    let x = 4;
    let mut y = TITLE_SIZE as i32 + 40;
    area.draw(&Text::new(panel.legend_title.clone(), (x, y), (FONT, LABEL_SIZE + 1).into_font()))
        .map_err(plot_error)?;
    for series in entries {
        y += LINE;
        area.draw(&Rectangle::new([(x, y), (x + SWATCH, y + SWATCH)], series.colour.filled())).map_err(plot_error)?;
        area.draw(&Text::new(series.name.clone(), (x + SWATCH + 6, y), (FONT, LABEL_SIZE).into_font()))
            .map_err(plot_error)?;
    }
    if panel.bars == Bars::Stacked {
        y += LINE;
        for line in STACK_NOTE {
            y += LINE - 4;
            area.draw(&Text::new(line, (x, y), (FONT, LABEL_SIZE - 1).into_font().color(&RGBColor(0x55, 0x55, 0x55))))
                .map_err(plot_error)?;
        }
    }
    Ok(())
}

fn value(series: &Series, category: usize) -> f64 {
    series.values.get(category).copied().unwrap_or(0.0)
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if value < -0.5 {
        out.insert(0, '-');
    }
    out
}

/// The contents of an SVG's `<text>` elements (tests look for labels with it).
#[cfg(test)]
pub fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(bars: Bars) -> Panel {
        Panel {
            title: "title".into(),
            x_desc: "x (unit)".into(),
            y_desc: "y (unit)".into(),
            legend_title: "stage".into(),
            categories: vec!["first".into(), "second".into(), "third".into()],
            series: vec![
                Series { name: "alpha_stage".into(), colour: PALETTE[0], values: vec![100.0, 200.0, 303.0] },
                Series { name: "beta_stage".into(), colour: PALETTE[1], values: vec![400.0, 500.0, 650.0] },
            ],
            bars,
        }
    }

    #[test]
    fn every_bar_every_label_and_every_legend_entry_is_drawn() {
        for bars in [Bars::Stacked, Bars::Grouped, Bars::GroupedLogScale] {
            let svg = svg(&[panel(bars), panel(bars)], 1, (800, 400)).unwrap();
            let fill = |c: RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            // Three bars and one legend swatch per series, per panel.
            assert_eq!(svg.matches(&fill(PALETTE[0])).count(), 2 * 4, "{svg}");
            assert_eq!(svg.matches(&fill(PALETTE[1])).count(), 2 * 4);
            let texts = texts(&svg);
            for text in ["alpha_stage", "beta_stage", "first", "second", "third", "x (unit)", "y (unit)", "stage"] {
                assert_eq!(texts.iter().filter(|t| *t == text).count(), 2, "{text} not once per panel: {texts:?}");
            }
            // Totals on stacked bars only.
            assert_eq!(texts.iter().any(|t| t == "953"), bars == Bars::Stacked);
        }
    }

    #[test]
    fn a_log_scale_gives_each_decade_the_same_height() {
        let mut log = panel(Bars::GroupedLogScale);
        log.series.truncate(1);
        log.series[0].values = vec![10.0, 100.0, 1000.0];
        let svg = svg(&[log], 1, (800, 400)).unwrap();
        let heights: Vec<f64> = svg
            .split("<rect")
            .filter(|r| r.contains("fill=\"#4477AA\""))
            .filter_map(|r| r.split("height=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect();
        // Three bars, then the legend's swatch.
        assert_eq!(heights.len(), 4, "{svg}");
        let (first, step) = (heights[0], heights[1] - heights[0]);
        assert!(first > 0.0 && step > 10.0, "{heights:?}");
        assert!((heights[2] - heights[1] - step).abs() <= 2.0, "a decade is not one step: {heights:?}");
        assert!(chart_texts_include(&svg, "1,000"), "decades are labelled");
    }

    fn chart_texts_include(svg: &str, text: &str) -> bool {
        texts(svg).iter().any(|t| t == text)
    }

    #[test]
    fn one_category_or_none_still_draws() {
        let mut one = panel(Bars::Stacked);
        one.categories.truncate(1);
        let mut none = panel(Bars::Grouped);
        none.categories.clear();
        none.series.iter_mut().for_each(|s| s.values.clear());
        let svg = svg(&[one, none], 2, (600, 300)).unwrap();
        assert!(texts(&svg).iter().any(|t| t == "first"));
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(6072.0), "6,072");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-1500.0), "-1,500");
    }
}
