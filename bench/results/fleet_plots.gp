# fleet_sim_bench: turns/s and front CPU per turn against episodes in flight
# (1,000 SIMULATED nodes). Data: fleet_turns.dat (episodes, turns/s, CPU µs per
# turn, offered turns/s), one row per measured point (medians over runs).
# Run in this directory: gnuplot fleet_plots.gp
set terminal pngcairo size 800,500 font 'sans,10' noenhanced
set output '../fleet_turns.png'
set title 'fleet_sim_bench: the real front + engine + RocksDB log, 1,000 simulated nodes, policy 1-10 s per turn'
set grid
set logscale x
set xlabel 'episodes in flight'
set ylabel 'turns/s'
set y2label 'front CPU per turn (us)'
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set key below
plot 'fleet_turns.dat' using 1:2 with linespoints lw 2 pt 7 title 'turns/s (measured)', \
     'fleet_turns.dat' using 1:4 with lines dt 2 lw 1 title 'turns/s the policy latency allows (episodes / 5.5 s)', \
     'fleet_turns.dat' using 1:3 axes x1y2 with linespoints lw 2 pt 5 title 'front CPU per turn (right axis)'
