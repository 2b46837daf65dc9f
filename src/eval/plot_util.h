// Pieces shared by the report writers (gate evaluation, bench): gnuplot runs and HTML escaping.
#pragma once

#include <fstream>
#include <string>

namespace kvgate::eval {

// 'text' quoted for the shell.
std::string shell_quote(const std::string& s);
// The one way any text enters a gnuplot script: a single-quoted gnuplot string (gnuplot expands
// backquotes and backslash escapes only inside double quotes), with ' doubled and control
// characters dropped, so a model, gate or file name cannot close the string or run a command.
// A '\n' becomes a line break, written as the fixed expression '...'."\n".'...' (gnuplot 5 takes
// string expressions for titles and labels).
std::string gnuplot_quote(const std::string& s);
// A label inside a gnuplot data file: double-quoted (data files are not command lines, so nothing
// is expanded there), with '"' and control characters dropped so it stays one column of one line.
std::string gnuplot_data_label(const std::string& s);
// An output stream for path; throws error when it cannot be created.
std::ofstream open_out(const std::string& path);
// The "set terminal ..." line for a PNG of width x height (pngcairo when gnuplot has it); throws
// error with an install hint when gnuplot is missing.
std::string terminal_line(int width, int height);
// Runs <plots_dir>/<name>.gp, which must write <plots_dir>/../<name>.png; throws error with
// gnuplot's messages when it fails or writes no image.
void run_gnuplot(const std::string& plots_dir, const std::string& name);
// &, <, >, " and ' as HTML entities.
std::string html_escape(const std::string& s);

}  // namespace kvgate::eval
