# Plot of tests/bench/run.sh: lmapd labels/s against batch size and against
# concurrency, from the data files run.sh writes. SVG, for the README.
#
#   gnuplot -e "dir='BENCH_DIR/last-full'; out='BENCH_DIR/plot.svg'; \
#               subtitle='...'; peer=1234; clients=4" tests/bench/plot.gp
#
# dir/plot-batch.dat  batch size, labels/s        (POST /v1/labels, .npy,
#                                                  `clients` liblmap clients)
# dir/plot-clients.dat clients, labels/s          (batch 256)
# dir/plot-conns.dat  wrk connections, labels/s   (single GET, sparse JSON)
# peer: the official path's labels/s (dashed line; 0 to leave it out);
# goal: the batch goal in labels/s (dotted line; 0 to leave it out).
if (!exists("dir")) dir = "."
if (!exists("out")) out = dir . "/plot.svg"
if (!exists("subtitle")) subtitle = ""
if (!exists("peer")) peer = 0
if (!exists("clients")) clients = 4
if (!exists("goal")) goal = 250000

set terminal svg size 1100,500 dynamic font "sans,12" background rgb "white"
set output out
set multiplot layout 1,2 title "lmapd soft labels per second, loopback, 2 shared cores\n{/*0.8 " . subtitle . "}"
set logscale x 2
set logscale y 10
set yrange [500:*]
set bmargin 8
set format y "%.0s%c"
set grid xtics ytics mytics lc rgb "#dddddd"
set key below horizontal width -2 samplen 2 font ",10"
set ylabel "labels/s"

set title sprintf("batch size (%d liblmap clients, .npy)", clients)
set xlabel "queries per POST /v1/labels"
plot dir . "/plot-batch.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "lmapd", \
     (peer > 0 ? peer : 1/0) with lines dt 2 lw 2 lc rgb "#d62728" title "official path", \
     (goal > 0 ? goal : 1/0) with lines dt 3 lw 2 lc rgb "#7f7f7f" title "batch goal"

set title "concurrency"
set xlabel "clients (batch 256) / wrk connections (single GET)"
plot dir . "/plot-clients.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "POST batch 256 (x: clients)", \
     dir . "/plot-conns.dat" using 1:2 with linespoints lw 2 pt 5 lc rgb "#2ca02c" title "GET sparse (x: wrk connections)", \
     (peer > 0 ? peer : 1/0) with lines dt 2 lw 2 lc rgb "#d62728" title "official path", \
     (goal > 0 ? goal : 1/0) with lines dt 3 lw 2 lc rgb "#7f7f7f" title "batch goal"
unset multiplot
