// Command genexport writes a synthetic customer export for the demo and the
// benchmarks: the columns id,first_name,last_name,email,phone,company,city,
// country,created_at, about 110 bytes a row, optionally gzipped, optionally
// salted with invalid rows and repeated keys, or with changed rows (a later
// export of the same customers).
//
//	go run ./scripts/genexport -rows 1000000 -out export.csv
package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "genexport:", err)
		}
		os.Exit(2)
	}
}

var (
	firsts    = []string{"Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Dennis", "Radia", "Niklaus"}
	lasts     = []string{"Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton", "Ritchie", "Perlman", "Wirth"}
	companies = []string{"Acme Ltd", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark Ind", "Wayne Ent"}
	cities    = []string{"London", "Paris", "Berlin", "Madrid", "Lisbon", "Dublin", "Vienna", "Prague"}
	countries = []string{"GB", "FR", "DE", "ES", "PT", "IE", "AT", "CZ"}
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("genexport", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rows := fs.Int("rows", 10000, "data rows to write")
	out := fs.String("out", "-", "output file; - for stdout")
	gz := fs.Bool("gzip", false, "gzip the output")
	badEvery := fs.Int("bad-every", 0, "make every Nth row invalid (bad email or empty id); 0: none")
	dupEvery := fs.Int("dup-every", 0, "repeat an earlier key every Nth row; 0: none")
	prefix := fs.String("prefix", "C", "key prefix")
	changeEvery := fs.Int("change-every", 0, "give every Nth row a new company, as a later export of the same customers would; 0: none")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var w io.Writer = stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	var zw *gzip.Writer
	if *gz {
		zw, _ = gzip.NewWriterLevel(w, gzip.BestSpeed)
		w = zw
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	bw.WriteString("id,first_name,last_name,email,phone,company,city,country,created_at\n")
	base := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	var line []byte
	for i := 0; i < *rows; i++ {
		if i%65536 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		k := i
		if *dupEvery > 0 && i > 0 && i%*dupEvery == 0 {
			k = i / 2
		}
		f, l := firsts[k%len(firsts)], lasts[(k/7)%len(lasts)]
		line = line[:0]
		id := *prefix + strconv.Itoa(10000000+k)
		email := id + "." + l + "@example.com"
		if *badEvery > 0 && i%*badEvery == *badEvery-1 {
			if (i / *badEvery)%2 == 0 {
				email = "no-at-sign.example.com"
			} else {
				id = ""
			}
		}
		line = append(line, id...)
		line = append(line, ',')
		line = append(line, f...)
		line = append(line, ',')
		line = append(line, l...)
		line = append(line, ',')
		line = append(line, email...)
		line = append(line, ",+44 20 7946 "...)
		line = strconv.AppendInt(line, int64(1000+k%9000), 10)
		line = append(line, ',')
		line = append(line, companies[k%len(companies)]...)
		if *changeEvery > 0 && i%*changeEvery == 0 {
			line = append(line, " (moved)"...)
		}
		line = append(line, ',')
		line = append(line, cities[(k/3)%len(cities)]...)
		line = append(line, ',')
		line = append(line, countries[(k/3)%len(countries)]...)
		line = append(line, ',')
		line = base.Add(time.Duration(k)*time.Minute).AppendFormat(line, time.RFC3339)
		line = append(line, '\n')
		bw.Write(line)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if zw != nil {
		return zw.Close()
	}
	return nil
}
