// The report's pictures: gnuplot scripts (.gp) and their data (.dat) written under
// <out>/plots/, rendered to <out>/*.png by running gnuplot, and an index.html that shows them
// with the summary. Scripts stay beside the data so a plot can be restyled and re-run by hand
// (`cd <out>/plots && gnuplot roc.gp`).
#pragma once

#include <string>
#include <vector>

#include "eval/report.h"

namespace kvgate::eval {

// One row of the trainer's loss CSV (columns epoch,layer,head,train_loss,val_loss).
struct loss_row {
  int epoch = 0, layer = 0, head = 0;
  double train_loss = 0.0, val_loss = 0.0;
};

// Reads the loss CSV by its header names (extra columns ignored); throws error naming the file
// and line for a missing column or a malformed number.
std::vector<loss_row> read_loss_csv(const std::string& path);

// The PNGs written by write_plots, in the order the page shows them (file names inside out_dir).
std::vector<std::string> plot_files(const report_options& options);

// Throws error with an install hint when gnuplot is not on PATH (call before long work).
void require_gnuplot();

// Writes every plot; throws error when gnuplot is not installed or a script fails (with
// gnuplot's message).
void write_plots(const eval_report& report, const eval_input& input, const report_options& options,
                 const std::string& out_dir);

void write_index_html(const eval_report& report, const eval_input& input, const report_options& options,
                      const std::string& out_dir);

}  // namespace kvgate::eval
