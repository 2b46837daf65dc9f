#include "eval/plots.h"
#include "eval/plot_util.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "common/error.h"

namespace kvgate::eval {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string gnuplot_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\'') {
      out += "''";
    } else if (c == '\n') {
      out += "'.\"\\n\".'";
    } else if (u >= 0x20 && u != 0x7f) {
      out += c;
    }
  }
  return out + "'";
}

std::string gnuplot_data_label(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c != '"' && u >= 0x20 && u != 0x7f) out += c;
  }
  return out + "\"";
}

std::ofstream open_out(const std::string& path) {
  std::ofstream out(path);
  if (!out) fail("cannot write {}", path);
  return out;
}

// pngcairo draws anti-aliased text and lines; the libgd png terminal is the fallback some
// minimal gnuplot builds have.
const std::string& png_terminal() {
  static const std::string terminal = [] {
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
      fail("gnuplot not found on PATH: the report's plots need it (Debian: apt-get install gnuplot-nox), "
           "or pass --no-plots");
    }
    return std::system("gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1") == 0 ? std::string("pngcairo")
                                                                                   : std::string("png");
  }();
  return terminal;
}

std::string terminal_line(int width, int height) {
  return fmt::format("set terminal {} size {},{} font 'Sans,9' noenhanced\n", png_terminal(), width, height);
}

// Runs plots/<name>.gp, which writes ../<name>.png; fails with gnuplot's messages.
void run_gnuplot(const std::string& plots_dir, const std::string& name) {
  const std::string log = plots_dir + "/" + name + ".log";
  const std::string command = "cd " + shell_quote(plots_dir) + " && gnuplot " + shell_quote(name + ".gp") + " >" +
                              shell_quote(name + ".log") + " 2>&1";
  if (std::system(command.c_str()) != 0) {
    std::ifstream in(log);
    std::stringstream ss;
    ss << in.rdbuf();
    fail("gnuplot failed on {}/{}.gp:\n{}", plots_dir, name, ss.str());
  }
  const std::string png = plots_dir + "/../" + name + ".png";
  if (!std::filesystem::exists(png) || std::filesystem::file_size(png) == 0) {
    fail("gnuplot wrote no image for {}/{}.gp", plots_dir, name);
  }
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

// Distinct colours for the heads overlaid in one panel (cycled past 8).
constexpr const char* k_head_colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                          "#9467bd", "#8c564b", "#e377c2", "#17becf"};

std::string head_colour(int ih) { return k_head_colours[ih % 8]; }

struct grid {
  int rows = 1, cols = 1;
};

grid grid_for(int n_panels) {
  grid g;
  g.cols = std::max(1, static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n_panels)))));
  g.rows = std::max(1, (n_panels + g.cols - 1) / g.cols);
  return g;
}

std::string multiplot_line(grid g, const std::string& title) {
  return fmt::format("set multiplot layout {},{} title {} font ',13'\n", g.rows, g.cols, gnuplot_quote(title));
}

// 1234567 -> "1.23M": counts weighted to the natural ratio are not integers.
std::string human(double v) {
  if (v >= 1e6) return fmt::format("{:.3g}M", v / 1e6);
  if (v >= 1e4) return fmt::format("{:.3g}k", v / 1e3);
  return fmt::format("{:.4g}", v);
}

// "gates.gguf" (or "lifetime: lifetime.gguf" for a named gate other than the default) for titles.
std::string gate_title(const eval_input& in) {
  const std::string file = std::filesystem::path(in.gates[0].path).filename().string();
  return in.gates[0].name == "gate" ? file : in.gates[0].name + ": " + file;
}

std::string nan_or(bool ok, double v) { return ok ? fmt::format("{:.6g}", v) : "NaN"; }

// Every head's points as one gnuplot data block, block index il * n_kv_head + ih, so a panel can
// address a head by `index`. An empty head gets a NaN point (gnuplot skips it quietly).
template <typename F>
void write_blocks(const std::string& path, const eval_report& r, F points_of) {
  auto out = open_out(path);
  for (const head_report& h : r.heads) {
    out << fmt::format("# layer {} head {}\n", h.layer, h.head);
    const std::vector<std::pair<double, double>> pts = points_of(h);
    if (pts.empty()) out << "NaN NaN\n";
    for (const auto& [x, y] : pts) out << fmt::format("{:.6g} {:.6g}\n", x, y);
    out << "\n\n";
  }
}

// Heads grouped by layer: layers[il] = indices into report.heads.
std::map<int, std::vector<int>> heads_by_layer(const eval_report& r) {
  std::map<int, std::vector<int>> layers;
  for (size_t i = 0; i < r.heads.size(); ++i) layers[r.heads[i].layer].push_back(static_cast<int>(i));
  return layers;
}

void plot_roc(const eval_report& r, const eval_input& in, const std::string& dir) {
  write_blocks(dir + "/roc.dat", r, [](const head_report& h) {
    std::vector<std::pair<double, double>> p;
    for (const roc_point& q : h.gates[0].roc) p.emplace_back(q.fpr, q.tpr);
    return p;
  });
  write_blocks(dir + "/roc_knorm.dat", r, [](const head_report& h) {
    std::vector<std::pair<double, double>> p;
    for (const roc_point& q : h.knorm_roc) p.emplace_back(q.fpr, q.tpr);
    return p;
  });
  const auto layers = heads_by_layer(r);
  const grid g = grid_for(static_cast<int>(layers.size()));
  std::string gp = terminal_line(std::max(900, g.cols * 300), g.rows * 270 + 60);
  gp += "set output '../roc.png'\n";
  gp += multiplot_line(g, fmt::format("ROC by layer of {}: one colour per head (AUC in key), key-norm baseline grey "
                                      "dashed\nx = false positive rate, y = true positive rate",
                                      gate_title(in)));
  gp += "set xrange [0:1]\nset yrange [0:1]\nset xtics 0.5 font ',8'\nset ytics 0.5 font ',8'\nset size square\n"
        "set key bottom right opaque font ',8' samplen 1.5 spacing 0.9\nset grid lc rgb '#e0e0e0'\n";
  for (const auto& [il, idx] : layers) {
    gp += fmt::format("set title 'layer {}' offset 0,-0.8\nplot ", il);
    for (int i : idx) gp += fmt::format("'roc_knorm.dat' index {} w l lc rgb '#b0b0b0' dt 2 notitle, ", i);
    for (int i : idx) {
      const head_report& h = r.heads[i];
      gp += fmt::format("'roc.dat' index {} w l lw 1.6 lc rgb '{}' title 'h{} {:.3f}', ", i, head_colour(h.head),
                        h.head, h.gates[0].auc);
    }
    gp += "x w l lc rgb '#808080' dt 3 notitle\n";
  }
  gp += "unset multiplot\n";
  open_out(dir + "/roc.gp") << gp;
  run_gnuplot(dir, "roc");
}

void plot_calibration(const eval_report& r, const eval_input& in, const std::string& dir, bool natural) {
  const std::string name = natural ? "calibration_natural" : "calibration";
  write_blocks(dir + "/" + name + ".dat", r, [natural](const head_report& h) {
    std::vector<std::pair<double, double>> p;
    const calibration& c = natural ? h.gates[0].cal_natural : h.gates[0].cal_balanced;
    for (const calibration_bin& b : c.bins) {
      if (b.count > 0) p.emplace_back(b.mean_pred, b.observed);
    }
    return p;
  });
  const auto layers = heads_by_layer(r);
  const grid g = grid_for(static_cast<int>(layers.size()));
  // Reliability curves can run through any corner, so the key sits outside each panel.
  std::string gp = terminal_line(std::max(900, g.cols * 370), g.rows * 270 + 60);
  gp += fmt::format("set output {}\n", gnuplot_quote("../" + name + ".png"));
  gp += multiplot_line(g, fmt::format("Calibration of {} on the {} class ratio (ECE in key)\nx = mean predicted "
                                      "probability, y = observed positive rate per bin; diagonal = perfect",
                                      gate_title(in), natural ? "NATURAL" : "BALANCED"));
  gp += "set xrange [0:1]\nset yrange [0:1]\nset xtics 0.5 font ',8'\nset ytics 0.5 font ',8'\nset size square\n"
        "set key outside right top font ',8' samplen 1 spacing 0.9\nset grid lc rgb '#e0e0e0'\n";
  for (const auto& [il, idx] : layers) {
    gp += fmt::format("set title 'layer {}' offset 0,-0.8\nplot ", il);
    for (int i : idx) {
      const head_report& h = r.heads[i];
      const double ece = natural ? h.gates[0].cal_natural.ece : h.gates[0].cal_balanced.ece;
      gp += fmt::format("{} index {} w lp pt 7 ps 0.5 lw 1.4 lc rgb '{}' title 'h{} {:.3f}', ", gnuplot_quote(name + ".dat"), i,
                        head_colour(h.head), h.head, ece);
    }
    gp += "x w l lc rgb '#808080' dt 3 notitle\n";
  }
  gp += "unset multiplot\n";
  open_out(dir + "/" + name + ".gp") << gp;
  run_gnuplot(dir, name);
}

void plot_loss(const std::vector<loss_row>& rows, const std::string& dir) {
  // [(layer, head)] -> rows by epoch
  std::map<std::pair<int, int>, std::vector<loss_row>> series;
  for (const loss_row& row : rows) series[{row.layer, row.head}].push_back(row);
  std::map<int, std::vector<int>> layers;  // layer -> data block indices
  {
    auto out = open_out(dir + "/loss.dat");
    int block = 0;
    for (auto& [key, s] : series) {
      std::sort(s.begin(), s.end(), [](const loss_row& a, const loss_row& b) { return a.epoch < b.epoch; });
      out << fmt::format("# layer {} head {}: epoch train_loss val_loss\n", key.first, key.second);
      for (const loss_row& row : s) out << fmt::format("{} {:.6g} {:.6g}\n", row.epoch, row.train_loss, row.val_loss);
      out << "\n\n";
      layers[key.first].push_back(block++);
    }
  }
  std::vector<int> block_head;  // [n_blocks] head of each block
  for (const auto& [key, s] : series) block_head.push_back(key.second);
  const grid g = grid_for(static_cast<int>(layers.size()));
  std::string gp = terminal_line(std::max(900, g.cols * 300), g.rows * 240 + 60);
  gp += "set output '../loss.png'\n";
  gp += multiplot_line(g, "Training loss (solid) and validation loss (dashed) per epoch\none panel per layer, "
                          "one colour per head");
  gp += "set xtics font ',8'\nset ytics font ',8'\nset key top right font ',8' samplen 1.5 spacing 0.9\n"
        "set grid lc rgb '#e0e0e0'\nset format y '%.2g'\n";
  for (const auto& [il, blocks] : layers) {
    gp += fmt::format("set title 'layer {}' offset 0,-0.8\nplot ", il);
    for (size_t k = 0; k < blocks.size(); ++k) {
      const int b = blocks[k], ih = block_head[b];
      gp += fmt::format("'loss.dat' index {0} u 1:2 w l lw 1.4 lc rgb '{1}' title 'h{2}', "
                        "'loss.dat' index {0} u 1:3 w l lw 1.4 dt 2 lc rgb '{1}' notitle{3}",
                        b, head_colour(ih), ih, k + 1 < blocks.size() ? ", " : "\n");
    }
  }
  gp += "unset multiplot\n";
  open_out(dir + "/loss.gp") << gp;
  run_gnuplot(dir, "loss");
}

void plot_confusion(const eval_report& r, const eval_input& in, const std::string& dir) {
  const int n_thr = static_cast<int>(r.thresholds.size());
  std::string gp = terminal_line(std::max(900, n_thr * 430), 490);
  gp += "set output '../confusion.png'\n";
  gp += fmt::format("set multiplot layout 1,{} title {} font ',12'\n", n_thr,
                    gnuplot_quote(fmt::format("Confusion matrices of {}, summed over all heads\non the natural class "
                                              "ratio (colour = share of the actual class)",
                                              gate_title(in))));
  gp += "set palette defined (0 '#ffffff', 1 '#3a78b5')\nset cbrange [0:1]\nunset colorbox\nset size square\n"
        "set xrange [-0.5:1.5]\nset yrange [-0.5:1.5]\nset xtics ('predicted neg' 0, 'predicted pos' 1) font ',10'\n"
        "set ytics ('actual neg' 0, 'actual pos' 1) rotate by 90 center font ',10'\nunset key\n";
  for (int it = 0; it < n_thr; ++it) {
    confusion_matrix c;
    c.threshold = r.thresholds[it];
    for (const head_report& h : r.heads) c += h.gates[0].confusion_natural[it];
    const double neg = c.fp + c.tn, pos = c.tp + c.fn;
    struct cell {
      int x, y;
      const char* name;
      double count, share;
    };
    const cell cells[] = {{0, 0, "TN", c.tn, neg > 0 ? c.tn / neg : 0}, {1, 0, "FP", c.fp, neg > 0 ? c.fp / neg : 0},
                          {0, 1, "FN", c.fn, pos > 0 ? c.fn / pos : 0}, {1, 1, "TP", c.tp, pos > 0 ? c.tp / pos : 0}};
    const std::string data = fmt::format("confusion_{}.dat", it);
    auto out = open_out(dir + "/" + data);
    out << "# predicted actual share_of_actual_class count\n";
    for (const cell& k : cells) out << fmt::format("{} {} {:.6g} {:.6g}\n", k.x, k.y, k.share, k.count);
    gp += fmt::format("set title 'threshold {}: precision {:.3f}, recall {:.3f}, keeps {:.1f}%' font ',10'\n",
                      c.threshold, c.precision(), c.recall(), 100 * c.positive_share());
    gp += "unset label\n";
    for (const cell& k : cells) {
      gp += fmt::format("set label {} at {},{} center front font ',12' tc rgb '{}'\n",
                        gnuplot_quote(fmt::format("{}\n{}\n{:.1f}%", k.name, human(k.count), 100 * k.share)), k.x, k.y,
                        k.share > 0.6 ? "#ffffff" : "#000000");
    }
    gp += fmt::format("plot {} u 1:2:3 w image\n", gnuplot_quote(data));
  }
  gp += "unset multiplot\n";
  open_out(dir + "/confusion.gp") << gp;
  run_gnuplot(dir, "confusion");
}

void plot_auc_heatmap(const eval_report& r, const eval_input& in, const std::string& dir) {
  int max_layer = 0, max_head = 0;
  for (const head_report& h : r.heads) max_layer = std::max(max_layer, h.layer), max_head = std::max(max_head, h.head);
  // `with image` needs every cell of the grid; a head absent from the report is NaN (blank).
  std::vector<std::vector<const head_report*>> cell(max_layer + 1, std::vector<const head_report*>(max_head + 1));
  for (const head_report& h : r.heads) cell[h.layer][h.head] = &h;
  double max_diff = 0.05;
  {
    auto out = open_out(dir + "/auc_heatmap.dat");
    out << "# head layer auc auc_minus_knorm\n";
    for (int il = 0; il <= max_layer; ++il) {
      for (int ih = 0; ih <= max_head; ++ih) {
        const head_report* h = cell[il][ih];
        const bool ok = h && h->n_pos > 0 && h->n_neg > 0;
        const double auc = ok ? h->gates[0].auc : 0, diff = ok ? h->gates[0].auc - h->knorm_auc : 0;
        if (ok) max_diff = std::max(max_diff, std::abs(diff));
        out << fmt::format("{} {} {} {}\n", ih, il, nan_or(ok, auc), nan_or(ok, diff));
      }
      out << "\n";
    }
  }
  max_diff = std::ceil(max_diff * 20) / 20;  // round up to 0.05 for a readable colour bar
  const int n_h = max_head + 1, n_l = max_layer + 1;
  const int panel_w = std::max(420, 150 + 55 * n_h), height = 130 + 22 * n_l;
  std::string gp = terminal_line(2 * panel_w + 60, height + 20);
  gp += "set output '../auc_heatmap.png'\n";
  gp += fmt::format("set multiplot layout 1,2 title {} font ',12'\n",
                    gnuplot_quote(fmt::format("{}: AUC per head (left)\nand its margin over key-norm AUC (right; blue "
                                              "= gate better)",
                                              gate_title(in))));
  gp += fmt::format("set xrange [-0.5:{}]\nset yrange [-0.5:{}]\nset xtics 1 font ',8'\nset ytics 1 font ',8'\n"
                    "set xlabel 'kv head'\nset ylabel 'layer'\nunset key\nset tics out\n",
                    n_h - 0.5, n_l - 0.5);
  const std::string label_font = n_h > 6 ? ",6" : ",7";
  gp += "set palette defined (0 '#fff7bc', 0.5 '#a1dab4', 0.8 '#41b6c4', 1 '#2c7fb8')\nset cbrange [0.5:1]\n"
        "set title 'AUC'\n";
  gp += fmt::format("plot 'auc_heatmap.dat' u 1:2:3 w image, '' u 1:2:($3==$3 ? sprintf('%.3f',$3) : '') w labels "
                    "font '{}'\n",
                    label_font);
  gp += fmt::format("set palette defined (-1 '#d6604d', -0.5 '#f4a582', 0 '#f7f7f7', 0.5 '#92c5de', 1 '#4393c3')\n"
                    "set cbrange [{}:{}]\nset title 'AUC - key-norm AUC'\n",
                    -max_diff, max_diff);
  gp += fmt::format("plot 'auc_heatmap.dat' u 1:2:4 w image, '' u 1:2:($4==$4 ? sprintf('%+.3f',$4) : '') w labels "
                    "font '{}'\n",
                    label_font);
  gp += "unset multiplot\n";
  open_out(dir + "/auc_heatmap.gp") << gp;
  run_gnuplot(dir, "auc_heatmap");
}


}  // namespace

void require_gnuplot() { png_terminal(); }

std::vector<loss_row> read_loss_csv(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read loss CSV {}", path);
  std::string line;
  if (!std::getline(in, line)) fail("{}: empty loss CSV", path);
  auto split = [](const std::string& s) {
    std::vector<std::string> cols;
    std::stringstream ss(s);
    std::string c;
    while (std::getline(ss, c, ',')) {
      while (!c.empty() && (c.back() == '\r' || c.back() == ' ')) c.pop_back();
      cols.push_back(c);
    }
    return cols;
  };
  const std::vector<std::string> header = split(line);
  auto column = [&](const char* name) {
    const auto it = std::find(header.begin(), header.end(), name);
    if (it == header.end()) fail("{}: no column '{}' (expected epoch,layer,head,train_loss,val_loss)", path, name);
    return static_cast<size_t>(it - header.begin());
  };
  const size_t c_epoch = column("epoch"), c_layer = column("layer"), c_head = column("head"),
               c_train = column("train_loss"), c_val = column("val_loss");
  std::vector<loss_row> rows;
  for (int line_no = 2; std::getline(in, line); ++line_no) {
    if (line.empty() || line == "\r") continue;
    const std::vector<std::string> cols = split(line);
    try {
      loss_row row;
      row.epoch = std::stoi(cols.at(c_epoch));
      row.layer = std::stoi(cols.at(c_layer));
      row.head = std::stoi(cols.at(c_head));
      row.train_loss = std::stod(cols.at(c_train));
      row.val_loss = std::stod(cols.at(c_val));
      rows.push_back(row);
    } catch (const std::exception&) {
      fail("{}:{}: malformed row '{}'", path, line_no, line);
    }
  }
  return rows;
}

std::vector<std::string> plot_files(const report_options& options) {
  std::vector<std::string> files = {"auc_heatmap.png", "roc.png", "calibration.png", "calibration_natural.png",
                                    "confusion.png"};
  if (!options.loss_csv.empty()) files.push_back("loss.png");
  return files;
}

void write_plots(const eval_report& r, const eval_input& in, const report_options& options, const std::string& out_dir) {
  png_terminal();  // fails first when gnuplot is missing
  const std::string dir = out_dir + "/plots";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("cannot create {}: {}", dir, ec.message());
  plot_auc_heatmap(r, in, dir);
  plot_roc(r, in, dir);
  plot_calibration(r, in, dir, false);
  plot_calibration(r, in, dir, true);
  plot_confusion(r, in, dir);
  if (!options.loss_csv.empty()) {
    const std::vector<loss_row> rows = read_loss_csv(options.loss_csv);
    if (rows.empty()) fail("{}: the loss CSV has no rows", options.loss_csv);
    plot_loss(rows, dir);
  }
}

void write_index_html(const eval_report& r, const eval_input& in, const report_options& options,
                      const std::string& out_dir) {
  using nlohmann::json;
  const json& s = r.json.at("summary");
  std::string h = "<!doctype html>\n<html><head><meta charset='utf-8'><title>kvgate gate evaluation</title>\n"
                  "<style>body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em}"
                  "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
                  "text-align:right}th{background:#f0f0f0}td:first-child{text-align:left}img{max-width:100%;"
                  "border:1px solid #ddd;margin:0.5em 0}.warn{color:#a00}</style></head><body>\n";
  h += fmt::format("<h1>Gate evaluation: {}</h1>\n<p>Held-out data: <code>{}</code>; {} heads ({} with both "
                   "classes), {} positives and {} negatives stored (negatives kept at rate {:.3g}).</p>\n",
                   html_escape(in.model_name), html_escape(in.data_path), s["n_heads"].get<int>(),
                   s["n_heads_scored"].get<int>(), s["n_pos"].get<int64_t>(), s["n_neg"].get<int64_t>(),
                   in.negative_keep);
  h += fmt::format("<p><b>Positive rate</b>: {:.2f}% of all labelled tokens (natural ratio); label: <code>{}</code>"
                   "</p>\n",
                   100 * s["positive_rate"].get<double>(), html_escape(in.label.dump()));
  h += "<h2>Summary</h2>\n<table><tr><th>scorer</th><th>source</th><th>median AUC</th><th>min AUC</th><th>mean AUC"
       "</th><th>ECE, balanced ratio</th><th>ECE, natural ratio</th><th>heads beating key-norm</th></tr>\n";
  for (size_t ig = 0; ig < in.gates.size(); ++ig) {
    const json& g = ig == 0 ? s : s["compare"][ig - 1];
    h += fmt::format("<tr><td>{} ({})</td><td>{}<br><small>{}</small></td><td>{:.3f}</td><td>{:.3f}</td><td>{:.3f}"
                     "</td><td>{:.3f}</td><td>{:.3f}</td><td>{}/{}</td></tr>\n",
                     html_escape(in.gates[ig].name), html_escape(in.gates[ig].objective),
                     html_escape(in.gates[ig].path), html_escape(in.gates[ig].score), g["median_auc"].get<double>(),
                     g["min_auc"].get<double>(), g["mean_auc"].get<double>(), g["ece"].get<double>(),
                     g["ece_natural"].get<double>(), g["heads_beating_knorm"].get<int>(),
                     s["n_heads_scored"].get<int>());
  }
  h += fmt::format("<tr><td>key-norm baseline</td><td>-||k||, from the key alone</td><td>{:.3f}</td><td>{:.3f}</td>"
                   "<td>{:.3f}</td><td>-</td><td>-</td><td>-</td></tr>\n",
                   s["knorm_median_auc"].get<double>(), s["knorm_min_auc"].get<double>(),
                   s["knorm_mean_auc"].get<double>());
  h += fmt::format("<tr><td>position baseline</td><td>-position (earlier kept); max(AUC, 1-AUC) per head: median "
                   "{:.3f}</td><td>{:.3f}</td><td>-</td><td>{:.3f}</td><td>-</td><td>-</td><td>-</td></tr>\n</table>\n",
                   s["position_median_auc_best_sign"].get<double>(), s["position_median_auc"].get<double>(),
                   s["position_mean_auc"].get<double>());
  h += "<p>The headline <code>ece</code> of report.json is the median over heads on the <b>balanced</b> class ratio "
       "(both classes the same weight: what the trainer's 50/50 batches see). On the <b>natural</b> ratio the "
       "stored negatives count 1/negative_keep each; a gate trained on balanced batches over-predicts there by "
       "design. AUC does not depend on the ratio.</p>\n";
  h += "<h2>Thresholds (primary gate, all heads, natural ratio)</h2>\n<table><tr><th>threshold</th><th>precision</th>"
       "<th>recall</th><th>F1</th><th>tokens kept</th></tr>\n";
  for (const json& c : s["confusion"]) {
    h += fmt::format("<tr><td>{}</td><td>{:.3f}</td><td>{:.3f}</td><td>{:.3f}</td><td>{:.2f}%</td></tr>\n",
                     c["threshold"].get<double>(), c["precision"].get<double>(), c["recall"].get<double>(),
                     c["f1"].get<double>(), 100 * c["keep_share"].get<double>());
  }
  h += "</table>\n";
  for (const std::string& w : in.warnings) h += "<p class='warn'>warning: " + html_escape(w) + "</p>\n";
  const std::map<std::string, std::string> captions = {
      {"auc_heatmap.png", "AUC by layer and head, and its margin over the key-norm baseline"},
      {"roc.png", "ROC curves, one panel per layer"},
      {"calibration.png", "Reliability diagrams on the balanced class ratio"},
      {"calibration_natural.png", "Reliability diagrams on the natural class ratio"},
      {"confusion.png", "Confusion matrices summed over heads"},
      {"loss.png", "Training and validation loss per layer (" + options.loss_csv + ")"}};
  for (const std::string& f : plot_files(options)) {
    h += fmt::format("<h2>{}</h2>\n<a href='{}'><img src='{}'></a>\n", html_escape(captions.at(f)), f, f);
  }
  if (options.loss_csv.empty()) h += "<p>No loss CSV was found, so there is no loss plot (see --loss-csv).</p>\n";
  h += "<h2>Per head</h2>\n<details><summary>table</summary>\n<table><tr><th>layer</th><th>head</th><th>n_pos</th>"
       "<th>n_neg</th><th>AUC</th><th>key-norm AUC</th><th>position AUC</th><th>ECE bal.</th><th>ECE nat.</th></tr>\n";
  for (const head_report& hr : r.heads) {
    const gate_head_metrics& g = hr.gates[0];
    h += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3f}</td><td>{:.3f}</td><td>{:.3f}</td>"
                     "<td>{:.3f}</td><td>{:.3f}</td></tr>\n",
                     hr.layer, hr.head, hr.n_pos, hr.n_neg, g.auc, hr.knorm_auc, hr.position_auc,
                     g.cal_balanced.ece, g.cal_natural.ece);
  }
  h += "</table></details>\n<p>Tables: <a href='report.json'>report.json</a>, <a href='heads.csv'>heads.csv</a>, "
       "<a href='roc.csv'>roc.csv</a>, <a href='calibration.csv'>calibration.csv</a>, <a href='confusion.csv'>"
       "confusion.csv</a>, <a href='confusion_total.csv'>confusion_total.csv</a>; gnuplot scripts and data in "
       "<code>plots/</code>.</p>\n</body></html>\n";
  open_out(out_dir + "/index.html") << h;
}

}  // namespace kvgate::eval
