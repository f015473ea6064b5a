#include "trainers/plot.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/tensor.h"

extern char** environ;

namespace hsa {

namespace {

// A gnuplot single-quoted string: the only escape is '' for a quote.
std::string quoted(const std::string& text) {
    std::string out = "'";
    for (char c : text) {
        if (c == '\'') out += "''";
        else if (c == '\n') out += ' ';
        else out += c;
    }
    return out + "'";
}

std::string number(double value) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.9g", value);
    return buffer;
}

std::string terminal_lines(int width, int height) {
    const std::string size = " size " + std::to_string(width) + "," + std::to_string(height);
    return "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n  set terminal pngcairo enhanced font 'sans,10'" + size +
           "\n} else {\n  set terminal png" + size + "\n}\n";
}

// An anonymous in-memory file (memfd): gnuplot's script and messages go through these, so
// a process killed mid-plot leaves no temporary files behind.
class MemoryFile {
public:
    explicit MemoryFile(const char* name) : fd_(memfd_create(name, MFD_CLOEXEC)) {
        HSA_CHECK(fd_ >= 0, "plot: cannot create an in-memory file: " << std::strerror(errno));
    }
    ~MemoryFile() {
        if (fd_ >= 0) ::close(fd_);
    }
    MemoryFile(const MemoryFile&) = delete;
    MemoryFile& operator=(const MemoryFile&) = delete;
    int fd() const { return fd_; }
    void write_all(const std::string& text) {
        for (size_t done = 0; done < text.size();) {
            const ssize_t n = ::write(fd_, text.data() + done, text.size() - done);
            if (n < 0 && errno == EINTR) continue;
            HSA_CHECK(n > 0, "plot: cannot write the gnuplot script: " << std::strerror(errno));
            done += static_cast<size_t>(n);
        }
        ::lseek(fd_, 0, SEEK_SET);
    }
    std::string read_all() const {
        ::lseek(fd_, 0, SEEK_SET);
        std::string text;
        char buffer[4096];
        for (ssize_t n; (n = ::read(fd_, buffer, sizeof buffer)) != 0;) {
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) break;
            text.append(buffer, static_cast<size_t>(n));
        }
        return text;
    }

private:
    int fd_;
};

// Runs gnuplot on the script (read from its stdin), which draws into a temporary PNG beside
// png_path that is then renamed. Only gnuplot's first message line is reported on failure.
void run_gnuplot(const std::string& script_body, const std::string& png_path) {
    HSA_CHECK(gnuplot_available(), "plot: gnuplot is not installed (install gnuplot-nox, see launch/setup.sh)");
    const std::string temporary_png = png_path + ".tmp.png";
    MemoryFile script("hsa-plot-script"), messages("hsa-plot-messages");
    script.write_all("set output " + quoted(temporary_png) + "\n" + script_body + "unset output\n");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, script.fd(), 0);
    posix_spawn_file_actions_adddup2(&actions, messages.fd(), 1);
    posix_spawn_file_actions_adddup2(&actions, messages.fd(), 2);
    std::string program = "gnuplot";
    std::vector<char*> argv = {program.data(), nullptr};
    pid_t pid = 0;
    const int spawned = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    HSA_CHECK(spawned == 0, "plot: cannot start gnuplot: " << std::strerror(spawned));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    std::istringstream lines(messages.read_all());
    std::string first_message, line;
    while (std::getline(lines, line))
        if (first_message.empty() && line.find_first_not_of(" \t^") != std::string::npos) first_message = line;
    std::error_code ec;
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) || !std::filesystem::exists(temporary_png, ec)) {
        std::filesystem::remove(temporary_png, ec);
        HSA_FAIL("plot: gnuplot failed drawing " << png_path << (first_message.empty() ? "" : ": " + first_message));
    }
    std::filesystem::rename(temporary_png, png_path, ec);
    HSA_CHECK(!ec, "plot: cannot rename " << temporary_png << " to " << png_path << ": " << ec.message());
}

}  // namespace

bool gnuplot_available() {
    const char* path = std::getenv("PATH");
    std::stringstream folders(path ? path : "");
    for (std::string folder; std::getline(folders, folder, ':');) {
        const std::string candidate = (folder.empty() ? std::string(".") : folder) + "/gnuplot";
        if (::access(candidate.c_str(), X_OK) == 0) return true;
    }
    return false;
}

void plot_lines(const LinePlot& plot, const std::string& png_path) {
    std::ostringstream script;
    script << terminal_lines(900, 560);
    script << "set title " << quoted(plot.title) << "\nset xlabel " << quoted(plot.x_label) << "\nset ylabel "
           << quoted(plot.y_label) << "\nset grid\nset key top right\n";
    if (plot.log_y) script << "set logscale y\n";
    std::vector<std::string> clauses;
    for (size_t s = 0; s < plot.series.size(); ++s) {
        const PlotSeries& series = plot.series[s];
        script << "$series" << s << " << EOD\n";
        size_t points = 0;
        for (size_t i = 0; i < series.x.size() && i < series.y.size(); ++i) {
            if (!std::isfinite(series.y[i]) || !std::isfinite(series.x[i]) || (plot.log_y && series.y[i] <= 0)) continue;
            script << number(series.x[i]) << " " << number(series.y[i]) << "\n";
            ++points;
        }
        script << "EOD\n";
        if (points == 0) continue;
        // A lone point (one evaluation) would vanish as a line.
        clauses.push_back("$series" + std::to_string(s) + " using 1:2 with " + (points == 1 ? "points pt 7" : points <= 40 ? "linespoints pt 7 ps 0.6 lw 2" : "lines lw 2") +
                          " title " + quoted(series.title));
    }
    HSA_CHECK(!clauses.empty(), "plot: nothing to draw for " << png_path << " (no finite values)");
    script << "plot ";
    for (size_t i = 0; i < clauses.size(); ++i) script << (i ? ", " : "") << clauses[i];
    script << "\n";
    run_gnuplot(script.str(), png_path);
}

void plot_heatmap(const HeatmapPlot& plot, const std::string& png_path) {
    HSA_CHECK(!plot.row_labels.empty() && !plot.column_labels.empty(), "plot: empty heatmap for " << png_path);
    HSA_CHECK(plot.values.size() == plot.row_labels.size(), "plot: heatmap rows do not match their labels");
    std::ostringstream script;
    script << terminal_lines(900, 140 + 60 * static_cast<int>(plot.row_labels.size()));
    script << "set title " << quoted(plot.title) << "\nset xlabel " << quoted(plot.x_label) << "\nset ylabel "
           << quoted(plot.y_label) << "\n";
    script << "set cbrange [" << number(plot.low) << ":" << number(plot.high) << "]\n";
    script << "set palette defined (0 '#b2182b', 0.5 '#fddbc7', 1 '#2166ac')\nunset key\nset tics scale 0\n";
    // The first row on top (depth 0 = the start of the context).
    script << "set xrange [-0.5:" << plot.column_labels.size() - 0.5 << "]\nset yrange [" << plot.row_labels.size() - 0.5
           << ":-0.5]\n";
    script << "set xtics (";
    for (size_t c = 0; c < plot.column_labels.size(); ++c) script << (c ? ", " : "") << quoted(plot.column_labels[c]) << " " << c;
    script << ")\nset ytics (";
    for (size_t r = 0; r < plot.row_labels.size(); ++r) script << (r ? ", " : "") << quoted(plot.row_labels[r]) << " " << r;
    script << ")\n$cells << EOD\n";
    for (size_t r = 0; r < plot.values.size(); ++r) {
        HSA_CHECK(plot.values[r].size() == plot.column_labels.size(), "plot: heatmap row " << r << " has the wrong length");
        for (size_t c = 0; c < plot.values[r].size(); ++c)
            script << c << " " << r << " " << (std::isfinite(plot.values[r][c]) ? number(plot.values[r][c]) : "NaN") << "\n";
    }
    script << "EOD\n";
    // Cells with their value printed on top, so the PNG is readable without the colour bar.
    script << "plot $cells using 1:2:3 with image, $cells using 1:2:(($3 == $3) ? sprintf('%.2f', $3) : '') with labels\n";
    run_gnuplot(script.str(), png_path);
}

std::vector<std::string> plot_training_log(const std::vector<Json>& records, const std::string& out_dir) {
    PlotSeries train{"training loss", {}, {}}, held_out{"held-out loss", {}, {}}, accuracy{"held-out accuracy", {}, {}};
    for (const Json& r : records) {
        if (!r.is_object() || !r.contains("step")) continue;
        const double step = r.at("step").as_number();
        if (r.contains("loss") && r.at("loss").is_number()) {
            train.x.push_back(step);
            train.y.push_back(r.at("loss").as_number());
        }
        if (r.contains("eval_loss") && r.at("eval_loss").is_number()) {
            held_out.x.push_back(step);
            held_out.y.push_back(r.at("eval_loss").as_number());
        }
        if (r.contains("eval_accuracy") && r.at("eval_accuracy").is_number()) {
            accuracy.x.push_back(step);
            accuracy.y.push_back(r.at("eval_accuracy").as_number());
        }
    }
    std::vector<std::string> written;
    if (!train.x.empty() || !held_out.x.empty()) {
        LinePlot loss{"loss", "step", "cross-entropy (nats)", {}, false};
        if (!train.x.empty()) loss.series.push_back(train);
        if (!held_out.x.empty()) loss.series.push_back(held_out);
        const std::string path = out_dir + "/loss.png";
        plot_lines(loss, path);
        written.push_back(path);
    }
    if (!accuracy.x.empty()) {
        const std::string path = out_dir + "/accuracy.png";
        plot_lines(LinePlot{"held-out accuracy", "step", "accuracy", {accuracy}, false}, path);
        written.push_back(path);
    }
    return written;
}

}  // namespace hsa
