# Checks Formula/mlx-serve.rb without Homebrew (run by scripts/check-formula):
#   ruby Formula/test/check_formula.rb FORMULA BIN_DIR MLX_C_CMAKELISTS
# BIN_DIR holds this checkout's built mlx-serve and mlx-serve-worker; MLX_C_CMAKELISTS is
# the CMakeLists.txt of the mlx-c that mlx-sys vendors (it pins the MLX version).
# Prints one line per check; exits 1 with the reasons when any fails.
require "English"
require "fileutils"
require "open3"
require "tmpdir"
require_relative "brew_stub"

formula_path, bin_dir, mlx_c_cmakelists = ARGV
abort "usage: check_formula.rb FORMULA BIN_DIR MLX_C_CMAKELISTS" unless mlx_c_cmakelists
BIN_DIR = Pathname(bin_dir).expand_path

# The failed checks, printed as they happen.
class Report
  attr_reader :failures

  def initialize
    @failures = []
  end

  def record(what, problem)
    if problem
      @failures << what
      puts "FAIL #{what}: #{problem}"
    else
      puts "ok   #{what}"
    end
  end
end
REPORT = Report.new

# A check's block returns nil when it holds, or what is wrong.
def check(what)
  REPORT.record(what, yield)
rescue StandardError => e
  REPORT.record(what, "#{e.class}: #{e.message}")
end

load formula_path
klass = Formula.loaded.last
abort "#{formula_path} defines no Formula subclass" unless klass
fields = klass.fields
deps = klass.dependencies
SHA256 = /\A[0-9a-f]{64}\z/.freeze

# ---- metadata ----
check("desc") { "missing or longer than 80 characters" unless fields[:desc].to_s.length.between?(1, 80) }
check("homepage") { "not https" unless fields[:homepage].to_s.start_with?("https://") }
check("url") do
  url = fields[:url].to_s
  next "not an https release tarball: #{url}" unless url.start_with?("https://") && url.end_with?(".tar.gz")

  "no version in #{url}" unless StubVersion.from_url(url)
end
check("sha256") { "not 64 hex digits" unless SHA256.match?(fields[:sha256].to_s) }
check("license") { "is #{fields[:license].inspect}, want \"MIT\"" unless fields[:license] == "MIT" }
check("head") { "missing" unless fields[:head]&.first.to_s.start_with?("https://") }
check("depends_on rust, cmake (build)") do
  missing = %w[rust cmake].reject { |name| deps.include?(name => :build) }
  "missing #{missing.join(", ")}" unless missing.empty?
end
check("depends_on arch: :arm64") { "missing" unless deps.include?(arch: :arm64) }
check("depends_on macos: Sonoma or newer (MLX needs macOS >= 14)") do
  macos = deps.find { |d| d.is_a?(Hash) && d.key?(:macos) }
  ok = [:sonoma, :sequoia, :tahoe].include?(macos && macos[:macos])
  "got #{macos.inspect}" unless ok
end
check("depends_on xcode (build; Metal compiler)") do
  "missing" unless deps.any? { |d| d.is_a?(Hash) && Array(d[:xcode]).include?(:build) }
end

# ---- resources: every MLX source pinned by checksum, mlx matching mlx-c's pin ----
pinned = File.read(mlx_c_cmakelists, encoding: "UTF-8")[/GIT_TAG v([0-9.]+)/, 1]
check("resources have https urls and sha256") do
  bad = klass.resources.values.reject { |r| r.url.to_s.start_with?("https://") && SHA256.match?(r.sha256.to_s) }
  "#{bad.map(&:name).join(", ")} incomplete" unless bad.empty?
end
check("resource mlx is the MLX mlx-c pins (#{pinned})") do
  mlx = klass.resources["mlx"]
  next "no resource \"mlx\"" unless mlx

  "resource mlx is #{mlx.version}" unless mlx.version == pinned
end

# ---- install, recorded ----
def with_env
  saved = ENV.to_h
  yield
ensure
  ENV.replace(saved)
end

def run_install(klass, pin_line, metal_toolchain: true)
  Dir.mktmpdir("formula-install") do |dir|
    root = Pathname(dir)
    cmakelists = root/"buildpath/.deps/mlx-sys/src/mlx-c/CMakeLists.txt"
    cmakelists.dirname.mkpath
    cmakelists.write("FetchContent_Declare(\n  mlx\n  #{pin_line})\n")
    formula = klass.new(prefix: root/"Cellar/mlx-serve/0", buildpath: root/"buildpath",
                        testpath: root/"test", homebrew_prefix: root/"brew")
    formula.quiet_system_status = metal_toolchain
    Dir.chdir(root/"buildpath") do
      with_env do
        formula.install
        return yield(formula, nil)
      rescue FormulaDied => e
        return yield(formula, e)
      end
    end
  end
end

pin_line = File.read(mlx_c_cmakelists, encoding: "UTF-8")[/GIT_TAG v[0-9.]+\)?/]
run_install(klass, pin_line) do |formula, died|
  calls = formula.calls
  check("install: completes with the pinned MLX") { "odie: #{died.message}" if died }
  check("install: scripts/setup --mlx-sys-only runs first (patched mlx-sys)") do
    first = calls.first && calls.first[:args]
    "first step is #{first.inspect}" unless first == ["scripts/setup", "--mlx-sys-only"]
  end
  cargo = calls.select { |c| c[:args].first(2) == %w[cargo install] }
  check("install: cargo install --locked of supervisor and worker into the keg") do
    paths = cargo.map { |c| c[:args].grep(/\A--path=/).first }
    next "cargo install paths #{paths.inspect}" unless paths == ["--path=supervisor", "--path=worker"]

    wrong = cargo.reject { |c| c[:args].include?("--locked") && c[:args].include?("--root=#{formula.prefix}") }
    "without --locked/--root: #{wrong.map { |c| c[:args] }.inspect}" unless wrong.empty?
  end
  check("install: worker built with the Metal feature") do
    worker = cargo.find { |c| c[:args].include?("--path=worker") }
    "worker args #{worker && worker[:args].inspect}" unless worker && worker[:args].include?("--features=metal")
  end
  check("install: metallib kept in the keg (MLX_RS_METAL_PATH)") do
    got = cargo.first && cargo.first[:env]["MLX_RS_METAL_PATH"]
    want = (formula.libexec/"mlx").to_s
    "MLX_RS_METAL_PATH=#{got.inspect}, want #{want}" unless got == want
  end
  check("install: MACOSX_DEPLOYMENT_TARGET pinned to the Mac's major.minor version") do
    got = cargo.first && cargo.first[:env]["MACOSX_DEPLOYMENT_TARGET"]
    "MACOSX_DEPLOYMENT_TARGET=#{got.inspect}, want \"26.2\" on macOS 26.2" unless got == "26.2"
  end
  check("install: the Metal toolchain is checked before cargo runs") do
    xcrun = calls.index { |c| c[:args].first(4) == %w[xcrun -sdk macosx metal] }
    first_cargo = calls.index { |c| c[:args].first == "cargo" }
    "no `xcrun -sdk macosx metal` check before cargo" unless xcrun && first_cargo && xcrun < first_cargo
  end
  check("install: CMake FetchContent fed only from staged resources") do
    env = cargo.first && cargo.first[:env]
    toolchain = env && env["CMAKE_TOOLCHAIN_FILE"]
    next "CMAKE_TOOLCHAIN_FILE not set for cargo" unless toolchain && File.file?(toolchain)

    text = File.read(toolchain, encoding: "UTF-8")
    next "FETCHCONTENT_FULLY_DISCONNECTED is not ON" unless text.include?("set(FETCHCONTENT_FULLY_DISCONNECTED ON")

    problems = formula.resources.map do |r|
      dir = text[/FETCHCONTENT_SOURCE_DIR_#{r.name.upcase} "([^"]+)"/, 1]
      if dir.nil? then "#{r.name}: no FETCHCONTENT_SOURCE_DIR_#{r.name.upcase}"
      elsif r.staged_to.map(&:to_s) != [dir] then "#{r.name}: staged to #{r.staged_to.inspect}, CMake reads #{dir}"
      end
    end.compact
    problems.join("; ") unless problems.empty?
  end
end
check("install: MLX version skew stops the build with both versions named") do
  klass.resources.each_value { |r| r.staged_to.clear }
  run_install(klass, "GIT_TAG v9.9.9)") do |formula, died|
    next "no odie for an mlx-c pinned to 9.9.9" unless died
    next "message lacks the versions: #{died.message}" unless died.message.include?("9.9.9") &&
                                                              died.message.include?(pinned)

    "cargo ran before the check" if formula.calls.any? { |c| c[:args].first == "cargo" }
  end
end

check("install: a missing Metal toolchain stops the build with the download command") do
  klass.resources.each_value { |r| r.staged_to.clear }
  run_install(klass, pin_line, metal_toolchain: false) do |formula, died|
    next "no odie without the Metal toolchain" unless died

    fix = "xcodebuild -downloadComponent MetalToolchain"
    next "message lacks the fix: #{died.message}" unless died.message.include?(fix)

    "cargo ran before the check" if formula.calls.any? { |c| c[:args].first == "cargo" }
  end
end
check("caveats: tell to rebuild after a macOS upgrade (deployment target)") do
  text = klass.new(prefix: "/keg", buildpath: "/build", testpath: "/test", homebrew_prefix: "/brew").caveats.to_s
  "caveats lack `brew reinstall mlx-serve`: #{text.inspect}" unless text.include?("brew reinstall mlx-serve")
end

# ---- service ----
formula = klass.new(prefix: "/keg", buildpath: "/build", testpath: "/test", homebrew_prefix: "/brew")
service = ServiceStub.new(formula)
service.instance_exec(&klass.service_block)
svc = service.fields
run = Array(svc[:run]).map(&:to_s)
check("service: runs `mlx-serve start --foreground` from opt_bin") do
  "run is #{run.inspect}" unless run.first(3) == ["#{formula.opt_bin}/mlx-serve", "start", "--foreground"]
end
check("service: `mlx-serve start` accepts the service's arguments") do
  exe = (BIN_DIR/"mlx-serve").to_s
  help, status = Open3.capture2e(exe, "start", "--help")
  next "`mlx-serve start --help` failed: #{help}" unless status.success?

  flags = run.drop(2).select { |a| a.start_with?("--") }.map { |a| a.split("=").first }
  unknown = flags.reject { |f| help.match?(/^\s+(-\w, )?#{Regexp.escape(f)}\b/) }
  next "not in `mlx-serve start --help`: #{unknown.join(" ")}" unless unknown.empty?

  # clap parses every argument before acting on --help: an argument it rejects fails here.
  out, status = Open3.capture2e(exe, *run.drop(1), "--help")
  "`mlx-serve #{run.drop(1).join(" ")}` is rejected: #{out}" unless status.success?
end
check("service: restarts on crash, not after a clean stop") do
  keep = svc[:keep_alive]
  "keep_alive is #{keep.inspect}" unless [{ crashed: true }, { successful_exit: false }].include?(keep)
end
check("service: logs under var/log") do
  paths = [svc[:log_path], svc[:error_log_path]]
  "log paths #{paths.inspect}" unless paths.all? { |p| p.to_s.start_with?("#{formula.var}/log/") }
end
check("service: working dir under var") do
  "working_dir #{svc[:working_dir].inspect}" unless svc[:working_dir].to_s.start_with?(formula.var.to_s)
end

# ---- test block, run for real against this checkout's binaries ----
check("test block: passes against the built binaries") do
  Dir.mktmpdir("formula-test") do |dir|
    root = Pathname(dir)
    keg = klass.new(prefix: root/"keg", buildpath: root, testpath: root/"testpath", homebrew_prefix: root/"brew")
    keg.bin.mkpath
    keg.testpath.mkpath
    %w[mlx-serve mlx-serve-worker].each { |b| FileUtils.ln_s(BIN_DIR/b, keg.bin/b) }
    # The Metal library exists only in a macOS build; an empty stand-in lets the rest run.
    (keg.libexec/"mlx").mkpath
    FileUtils.touch(keg.libexec/"mlx/mlx.metallib")
    # This keg is the checkout's build, so its version is the workspace's (as for --HEAD).
    keg.version = `#{BIN_DIR}/mlx-serve --version`.split.last
    with_env do
      ENV.delete("MLX_SERVE_WORKER_BIN")
      Dir.chdir(keg.testpath) { keg.instance_exec(&klass.test_block) }
    end
    nil
  end
end
check("test block: checks --version, /health and a clean stop") do
  source = File.read(formula_path, encoding: "UTF-8")[/^  test do\n.*?^  end\n/m].to_s
  wanted = ["--version", "/health", "free_port", "Process.kill", "start\", \"--foreground"]
  missing = wanted.reject { |w| source.include?(w) }
  "test block lacks #{missing.join(", ")}" unless missing.empty?
end

if REPORT.failures.empty?
  puts "formula OK: #{klass.name} #{StubVersion.from_url(fields[:url])}"
else
  warn "#{REPORT.failures.size} formula check(s) failed"
  exit 1
end
