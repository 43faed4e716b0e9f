// fp32 GEMM GFLOP/s of several BLAS libraries side by side, at all-MiniLM-L6-v2's shapes.
//
// Built and run by bench/blas_libraries.sh, which finds the candidates and passes them as
//   LABEL=PATH[,prefix=P][,api=bli][,env=NAME=VALUE][,preload=PATH]...
// Each (library, thread count) is measured in its own forked child that dlopens only that
// library, so thread pools of one library never spin while another is timed. Rounds
// alternate over all candidates; every cell keeps its best (others on a shared machine only
// ever make a run slower). Each cell is reported twice: wall-clock GFLOP/s of the best call,
// and GFLOP per CPU-second of the whole process over all calls (library threads that
// spin-wait are charged for it, and on a loaded machine it still measures the library
// rather than the load).
//
// Shapes (M = 32 sequences x 128 tokens; weights stored [N, K] row-major and used
// transposed, as MLX's `x @ w.T` calls sgemm):
//   qkv [4096,384]x[384,1152]   attn-out [4096,384]x[384,384]
//   ffn-up [4096,384]x[384,1536]  ffn-down [4096,1536]x[1536,384]
// and the attention GEMMs the worker runs per (sequence, head) straight from the fused QKV
// output (head_dim 32, lda 1152): S = Q K^T (n x n x 32), O = P V (n x 32 x n), for 32 x 12
// (sequence, head) pairs, split over T caller threads as cpu_attention.rs does; once with
// every n = 128 and once with n drawn from 8..128.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                               float, float *, int);
// BLIS typed API: strides instead of transposes; dim_t and inc_t are int64.
typedef void (*bli_sgemm_fn)(int, int, int64_t, int64_t, int64_t, const float *, const float *, int64_t, int64_t,
                             const float *, int64_t, int64_t, const float *, float *, int64_t, int64_t);

static cblas_sgemm_fn cblas;
static bli_sgemm_fn bli;

// C[m,n] = A[m,k] * op(B), row-major; B is [n,k] (ldb) when tb, else [k,n].
static void sgemm(int tb, int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c, int ldc) {
  if (cblas) {
    cblas(ROW_MAJOR, NO_TRANS, tb ? TRANS : NO_TRANS, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
  } else {
    const float one = 1.0f, zero = 0.0f;
    // op(B) is k x n: element (p, j) at b[j*ldb + p] when transposed, b[p*ldb + j] otherwise.
    bli(0, 0, m, n, k, &one, a, lda, 1, b, tb ? 1 : ldb, tb ? ldb : 1, &zero, c, ldc, 1);
  }
}

static double clock_s(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
// CPU seconds of every thread of the process, the library's spinning workers included.
static double cpu(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

#define SEQS 32
#define HEADS 12
#define HEAD_DIM 32
#define MAXLEN 128
#define TASKS (SEQS * HEADS)

struct attn {
  const float *qkv;
  float *out;
  const int *lens;
  int first, last;
};

static void *attn_run(void *p) {
  struct attn *a = p;
  const int width = 3 * HEADS * HEAD_DIM, out_width = HEADS * HEAD_DIM;
  float *scores = malloc(sizeof(float) * MAXLEN * MAXLEN);
  for (int t = a->first; t < a->last; t++) {
    int s = t / HEADS, h = t % HEADS, n = a->lens[s];
    const float *base = a->qkv + (size_t)s * MAXLEN * width;
    sgemm(1, n, n, HEAD_DIM, base + h * HEAD_DIM, width, base + (HEADS + h) * HEAD_DIM, width, scores, n);
    for (int i = 0; i < n * n; i++) scores[i] *= 0.01f;  // keeps values bounded; softmax is not BLAS
    sgemm(0, n, HEAD_DIM, n, scores, n, base + (2 * HEADS + h) * HEAD_DIM, width,
          a->out + (size_t)s * MAXLEN * out_width + h * HEAD_DIM, out_width);
  }
  free(scores);
  return NULL;
}

static void attention(const float *qkv, float *out, const int *lens, int callers) {
  pthread_t th[8];
  struct attn args[8];
  int per = (TASKS + callers - 1) / callers;
  for (int c = 0; c < callers; c++) {
    args[c] = (struct attn){qkv, out, lens, c * per, (c + 1) * per < TASKS ? (c + 1) * per : TASKS};
    if (c) pthread_create(&th[c], NULL, attn_run, &args[c]);
  }
  attn_run(&args[0]);
  for (int c = 1; c < callers; c++) pthread_join(th[c], NULL);
}

#define NSHAPES 6
static const char *shape_names[NSHAPES] = {
    "qkv      4096x384 x384x1152", "attn-out 4096x384 x384x384 ", "ffn-up   4096x384 x384x1536",
    "ffn-down 4096x1536x1536x384", "attention 32x12 heads n=128", "attention 32x12 n=8..128   ",
};
static const int shapes[4][3] = {{4096, 384, 1152}, {4096, 384, 384}, {4096, 384, 1536}, {4096, 1536, 384}};

static double attn_flops(const int *lens) {
  double f = 0;
  for (int s = 0; s < SEQS; s++) f += HEADS * 2.0 * (2.0 * lens[s] * lens[s] * HEAD_DIM);
  return f;
}

// GFLOP/s of `call`, after two warm-up calls, over repeats filling ~0.25 s: the best
// single call by wall clock, and all repeats together by CPU time (per-call CPU time of a
// multi-threaded process lags by up to a scheduler tick per thread, which a best-of would
// pick out; summed over ~0.25 s the lag is a few percent at most).
#define MEASURE(flops, out_wall, out_cpu, call)                  \
  do {                                                           \
    call;                                                        \
    call;                                                        \
    double best_ = 1e30, start_ = now(), cpu0_ = cpu();          \
    int reps_ = 0;                                               \
    while (reps_ < 3 || (now() - start_ < 0.25 && reps_ < 200)) { \
      double t_ = now();                                         \
      call;                                                      \
      t_ = now() - t_;                                           \
      if (t_ < best_) best_ = t_;                                \
      reps_++;                                                   \
    }                                                            \
    out_wall = (flops) / best_ / 1e9;                            \
    out_cpu = (flops) * reps_ / (cpu() - cpu0_) / 1e9;           \
  } while (0)

static void set_threads(void *lib, const char *prefix, int threads) {
  char name[128];
  const char *setters[] = {"openblas_set_num_threads", "MKL_Set_Num_Threads", NULL};
  for (int i = 0; setters[i]; i++) {
    snprintf(name, sizeof name, "%s%s", prefix, setters[i]);
    void (*f)(int) = (void (*)(int))dlsym(lib, name);
    if (f) f(threads);
  }
  void (*blis_set)(int64_t) = (void (*)(int64_t))dlsym(lib, "bli_thread_set_num_threads");
  if (blis_set) blis_set(threads);
}

// What the library says it runs as (OpenBLAS core, BLIS arch, MKL version).
static void describe(void *lib, const char *prefix, char *out, size_t len) {
  char name[128];
  out[0] = 0;
  snprintf(name, sizeof name, "%sopenblas_get_corename", prefix);
  char *(*core)(void) = (char *(*)(void))dlsym(lib, name);
  snprintf(name, sizeof name, "%sopenblas_get_config", prefix);
  char *(*config)(void) = (char *(*)(void))dlsym(lib, name);
  if (core && config) {
    snprintf(out, len, "core %s; %s", core(), config());
    return;
  }
  int (*arch_id)(void) = (int (*)(void))dlsym(lib, "bli_arch_query_id");
  const char *(*arch_str)(int) = (const char *(*)(int))dlsym(lib, "bli_arch_string");
  const char *(*version)(void) = (const char *(*)(void))dlsym(lib, "bli_info_get_version_str");
  if (arch_id) {
    snprintf(out, len, "BLIS %s, arch %s", version ? version() : "?", arch_str ? arch_str(arch_id()) : "?");
    return;
  }
  void (*mkl_version)(char *, int) = (void (*)(char *, int))dlsym(lib, "MKL_Get_Version_String");
  if (mkl_version) mkl_version(out, (int)len);
}

// Child: load one library, measure every shape with `threads`, write the cells to `fd`.
static int child(const char *spec, int threads, int fd) {
  char buf[4096], *path = NULL, *prefix = "", *api = "cblas";
  snprintf(buf, sizeof buf, "%s", spec);
  char *save, *tok = strtok_r(strchr(buf, '=') + 1, ",", &save);
  path = tok;
  while ((tok = strtok_r(NULL, ",", &save))) {
    if (!strncmp(tok, "prefix=", 7)) prefix = tok + 7;
    else if (!strncmp(tok, "api=", 4)) api = tok + 4;
    else if (!strncmp(tok, "env=", 4)) putenv(tok + 4);
    else if (!strncmp(tok, "preload=", 8) && !dlopen(tok + 8, RTLD_NOW | RTLD_GLOBAL))
      return fprintf(stderr, "%s\n", dlerror()), 1;
  }
  char n[16];
  snprintf(n, sizeof n, "%d", threads);
  const char *vars[] = {"OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", NULL};
  for (int i = 0; vars[i]; i++) setenv(vars[i], n, 1);
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) return fprintf(stderr, "%s\n", dlerror()), 1;
  char name[128];
  if (!strcmp(api, "bli")) {
    bli = (bli_sgemm_fn)dlsym(lib, "bli_sgemm");
  } else {
    snprintf(name, sizeof name, "%scblas_sgemm", prefix);
    cblas = (cblas_sgemm_fn)dlsym(lib, name);
  }
  if (!cblas && !bli) return fprintf(stderr, "%s: no sgemm\n", path), 1;
  set_threads(lib, prefix, threads);

  size_t big = (size_t)4096 * 1536;
  float *a = malloc(sizeof(float) * big), *b = malloc(sizeof(float) * 1536 * 1536), *c = malloc(sizeof(float) * big);
  for (size_t i = 0; i < big; i++) a[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
  for (size_t i = 0; i < 1536 * 1536; i++) b[i] = (float)((i * 104729) % 1000) / 1000.0f - 0.5f;
  double out[2 * NSHAPES];  // wall GFLOP/s, then GFLOP per CPU-second
  for (int s = 0; s < 4; s++) {
    int m = shapes[s][0], k = shapes[s][1], nn = shapes[s][2];
    MEASURE(2.0 * m * nn * k, out[s], out[NSHAPES + s], sgemm(1, m, nn, k, a, k, b, k, c, nn));
  }
  int full[SEQS], mixed[SEQS];
  uint32_t st = 0x2545f491u;
  for (int s = 0; s < SEQS; s++) {
    st ^= st << 13, st ^= st >> 17, st ^= st << 5;
    full[s] = MAXLEN, mixed[s] = 8 + st % (MAXLEN - 7);
  }
  MEASURE(attn_flops(full), out[4], out[NSHAPES + 4], attention(a, c, full, threads));
  MEASURE(attn_flops(mixed), out[5], out[NSHAPES + 5], attention(a, c, mixed, threads));
  char desc[512];
  describe(lib, prefix, desc, sizeof desc);
  if (write(fd, out, sizeof out) != sizeof out || write(fd, desc, sizeof desc) != sizeof desc) return 1;
  return 0;
}

static int label_len(const char *spec) { return (int)(strchr(spec, '=') - spec); }

int main(int argc, char **argv) {
  int rounds = getenv("ROUNDS") ? atoi(getenv("ROUNDS")) : 3;
  int nlib = argc - 1, thread_counts[] = {1, 2};
  if (nlib < 1) return fprintf(stderr, "usage: %s LABEL=PATH[,prefix=P][,api=bli][,env=N=V]...\n", argv[0]), 2;
  for (int l = 0; l < nlib; l++)
    if (!strchr(argv[l + 1], '=')) return fprintf(stderr, "%s: want LABEL=PATH\n", argv[l + 1]), 2;
  double(*best)[2][2 * NSHAPES] = calloc(nlib, sizeof *best);
  char(*desc)[512] = calloc(nlib, 512);
  for (int r = 0; r < rounds; r++) {
    for (int l = 0; l < nlib; l++) {
      for (int ti = 0; ti < 2; ti++) {
        int fds[2];
        if (pipe(fds)) return 1;
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
          close(fds[0]);
          _exit(child(argv[l + 1], thread_counts[ti], fds[1]));
        }
        close(fds[1]);
        double got[2 * NSHAPES];
        char d[512];
        int status;
        int ok = read(fds[0], got, sizeof got) == sizeof got && read(fds[0], d, sizeof d) == sizeof d;
        close(fds[0]);
        waitpid(pid, &status, 0);
        if (!ok || !WIFEXITED(status) || WEXITSTATUS(status)) {
          fprintf(stderr, "%s: failed\n", argv[l + 1]);
          continue;
        }
        memcpy(desc[l], d, sizeof d);
        for (int s = 0; s < 2 * NSHAPES; s++)
          if (got[s] > best[l][ti][s]) best[l][ti][s] = got[s];
      }
    }
    fprintf(stderr, "round %d/%d done\n", r + 1, rounds);
  }
  for (int l = 0; l < nlib; l++) printf("%-14.*s %s\n", label_len(argv[l + 1]), argv[l + 1], desc[l]);
  const char *metric[2] = {"GFLOP/s (wall clock)", "GFLOP per CPU-second (all threads)"};
  for (int ti = 0; ti < 2; ti++) {
    for (int mi = 0; mi < 2; mi++) {
      printf("\n%s, best of %d rounds, %d thread%s\n%-28s", metric[mi], rounds, thread_counts[ti], ti ? "s" : "", "shape");
      for (int l = 0; l < nlib; l++) {
        int len = label_len(argv[l + 1]);
        printf(" %12.*s", len > 12 ? 12 : len, argv[l + 1]);
      }
      printf("\n");
      for (int s = 0; s < NSHAPES; s++) {
        printf("%-28s", shape_names[s]);
        for (int l = 0; l < nlib; l++) printf(" %12.1f", best[l][ti][mi * NSHAPES + s]);
        printf("\n");
      }
    }
  }
  return 0;
}
