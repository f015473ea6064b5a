// PNG plots drawn by gnuplot (the package gnuplot-nox, installed by launch/setup.sh): a
// script with the data inline is fed to gnuplot, run as a child process, through an
// in-memory file, so a run killed mid-plot leaves at most a "<name>.tmp.png" (replaced by
// the next plot) and no temporary files elsewhere. The pngcairo terminal
// is used where gnuplot has it, else png. Plots are written to "<name>.tmp.png" and renamed,
// so a reader never sees half a PNG.
#pragma once

#include <string>
#include <vector>

#include "core/json.h"

namespace hsa {

// True when a "gnuplot" executable is on PATH.
bool gnuplot_available();

struct PlotSeries {
    std::string title;
    std::vector<double> x, y;  // non-finite y values are left out
};

struct LinePlot {
    std::string title, x_label, y_label;
    std::vector<PlotSeries> series;
    bool log_y = false;
};

// Length x depth style heatmap: values[row][column], NaN = no data (drawn blank).
struct HeatmapPlot {
    std::string title, x_label, y_label;
    std::vector<std::string> column_labels, row_labels;
    std::vector<std::vector<double>> values;
    double low = 0, high = 1;  // colour range
};

// Both throw hsa::Error with one line (gnuplot's first error line) when gnuplot is absent
// or fails.
void plot_lines(const LinePlot& plot, const std::string& png_path);
void plot_heatmap(const HeatmapPlot& plot, const std::string& png_path);

// Draws out_dir/loss.png (training loss, and held-out loss where evaluations ran) and, when
// any record has eval_accuracy, out_dir/accuracy.png, from log.jsonl records (train_log.h).
// Returns the files written.
std::vector<std::string> plot_training_log(const std::vector<Json>& records, const std::string& out_dir);

}  // namespace hsa
