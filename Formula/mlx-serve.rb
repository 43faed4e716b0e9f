# Homebrew formula for mlx-serve. This repository is its own tap:
#   brew tap mlx-serve/mlx-serve https://github.com/mlx-serve/mlx-serve
#   brew install mlx-serve && brew services start mlx-serve
# Checked on every test run by scripts/check-formula (Formula/test/).
class MlxServe < Formula
  desc "Local embedding and reranking server on Apple's MLX"
  homepage "https://github.com/mlx-serve/mlx-serve"
  # Release tooling (scripts/bump-formula, run by .github/workflows/release.yml) rewrites
  # these two lines for every release; the zero checksum fails `brew fetch` until then.
  url "https://github.com/mlx-serve/mlx-serve/releases/download/v0.1.0/mlx-serve-0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "MIT"
  head "https://github.com/mlx-serve/mlx-serve.git", branch: "main"

  depends_on "cmake" => :build
  depends_on "rust" => :build
  # MLX's Metal kernels are compiled with `xcrun metal`, which only Xcode ships, and MLX
  # refuses an SDK older than macOS 14 ("MLX requires macOS SDK >= 14.0 to be built with
  # MLX_BUILD_METAL=ON"); Xcode 15.0 is the first with that SDK.
  depends_on xcode: ["15.0", :build]
  depends_on arch: :arm64
  # MLX's CMakeLists.txt (v0.32.2): `message(FATAL_ERROR "MLX requires macOS >= 14.0")`
  # when the deployment target is older. 14 is Sonoma.
  depends_on macos: :sonoma
  depends_on :macos

  # How MLX is obtained: mlx-sys' own build, fed from these resources.
  #
  # mlx-rs links MLX statically through mlx-sys 0.7.0, whose vendored mlx-c pins MLX with
  # `GIT_TAG v0.32.2` and fetches it (and MLX fetches metal-cpp, json, fmt, gguflib) with
  # CMake FetchContent at build time. Homebrew wants no such fetches: its own CMake
  # arguments install a provider that refuses FetchContent "please use a formula
  # dependency or add a resource to the formula" (Library/Homebrew/cmake/
  # trap_fetchcontent_provider.cmake). So each source is a checksummed resource below, and
  # `install` points FetchContent at them with FETCHCONTENT_SOURCE_DIR_<NAME> and
  # FETCHCONTENT_FULLY_DISCONNECTED (the way homebrew/core's `mlx` formula feeds gguflib
  # and metal-cpp). Cargo still downloads crates (network is allowed while building).
  #
  # Why not homebrew/core's `mlx`/`mlx-c`: they follow MLX releases, and mlx-c here must
  # compile against exactly MLX 0.32.2 (a newer MLX fails to compile mlx-c or fails at
  # load with missing symbols), so that formula would break whenever core moves on.
  #
  # The `mlx` version must equal mlx-c's GIT_TAG; `install` stops with a clear message
  # when they differ. The other pins are MLX 0.32.2's own: CMakeLists.txt (metal-cpp_26,
  # json v3.11.3, fmt 12.1.0) and mlx/io/CMakeLists.txt (gguflib). Checksums are the ones
  # published for these archives (this tree is built offline); `brew fetch` verifies them.
  resource "mlx" do
    url "https://github.com/ml-explore/mlx/archive/refs/tags/v0.32.2.tar.gz"
    sha256 "bf892386ccac1d249acc9da21574fd7b95a995f4c58b03310105fe05f077b175"
  end

  resource "metal_cpp" do
    url "https://developer.apple.com/metal/cpp/files/metal-cpp_26.zip"
    sha256 "4df3c078b9aadcb516212e9cb03004cbc5ce9a3e9c068fa3144d021db585a3a4"
  end

  resource "json" do
    url "https://github.com/nlohmann/json/releases/download/v3.11.3/json.tar.xz"
    sha256 "d6c65aca6b1ed68e7a182f4757257b107ae403032760ed6ef121c9d55e81757d"
  end

  resource "fmt" do
    url "https://github.com/fmtlib/fmt/archive/refs/tags/12.1.0.tar.gz"
    sha256 "ea7de4299689e12b6dddd392f9896f08fb0777ac7168897a244a6d6085043fea"
  end

  resource "gguflib" do
    url "https://github.com/antirez/gguf-tools/archive/8fa6eb65236618e28fd7710a0fba565f7faa1848.tar.gz"
    sha256 "9e30bc1eb82cc2231150d39ce37dcdd6f844d6994fba18da83fc537a487ba86f"
  end

  # FetchContent names (upper-cased in FETCHCONTENT_SOURCE_DIR_<NAME>) of the resources.
  FETCHCONTENT_RESOURCES = %w[mlx metal_cpp json fmt gguflib].freeze

  def install
    # Cargo.toml's [patch.crates-io] points mlx-sys at .deps/mlx-sys: the crate with
    # patches/mlx-sys-0.7.0.patch applied, placed by the same code the developer setup
    # uses. On macOS arm64 the patch compiles to nothing new (its build.rs keeps the
    # upstream path on macOS, its half.h block and mach_approximate_time shim are for
    # non-ARM / non-Apple targets), but Cargo.lock records the patched crate and
    # `cargo install --locked` needs it.
    ENV["MLX_SERVE_DEV_CACHE"] = (buildpath/".cache").to_s
    system "scripts/setup", "--mlx-sys-only"

    # Xcode 26 no longer bundles the Metal compiler: it is a separate download, and
    # without it MLX's build fails at its `xcrun metal` steps, long after the crates have
    # built. Fail first, with the fix. The error text and the fix are
    # Xcode's own ("cannot execute tool 'metal' due to missing Metal Toolchain; use:
    # xcodebuild -downloadComponent MetalToolchain", actions/runner-images#13094).
    unless quiet_system "xcrun", "-sdk", "macosx", "metal", "--version"
      odie "Xcode's Metal toolchain is missing (Xcode 26 downloads it separately). Install it with\n  " \
           "xcodebuild -downloadComponent MetalToolchain\nthen run `brew install mlx-serve` again."
    end

    # MLX builds its fastest Metal kernels (NAX) only when Metal 4, the macOS 26.2 SDK and a
    # deployment target >= 26.2 are all there (mlx/backend/metal/CMakeLists.txt, v0.32:
    # "NAX kernels require ... MACOSX_DEPLOYMENT_TARGET >= 26.2"), and CMake takes the
    # target from MACOSX_DEPLOYMENT_TARGET. Pin it to this Mac's major.minor version, as
    # homebrew/core's `mlx` formula does (Formula/m/mlx.rb: `ENV["MACOSX_DEPLOYMENT_TARGET"]
    # = "#{MacOS.version.major}.#{MacOS.version.minor.to_i}"`), from the full version so a
    # 26.2 Mac gets 26.2. The build then needs this macOS or newer: see `caveats`.
    macos = MacOS.full_version
    ENV["MACOSX_DEPLOYMENT_TARGET"] = "#{macos.major}.#{macos.minor.to_i}"

    pinned = (buildpath/".deps/mlx-sys/src/mlx-c/CMakeLists.txt").read(encoding: "UTF-8")[/GIT_TAG v([0-9.]+)/, 1]
    mlx_version = resource("mlx").version.to_s
    if pinned != mlx_version
      odie "MLX version skew: mlx-sys' mlx-c pins MLX #{pinned.inspect} but resource \"mlx\" is " \
           "#{mlx_version}; update the resource (and MLX's own pins) to MLX #{pinned}"
    end

    sources = buildpath/"fetchcontent"
    cache = FETCHCONTENT_RESOURCES.map do |name|
      (sources/name).install resource(name)
      "set(FETCHCONTENT_SOURCE_DIR_#{name.upcase} \"#{sources/name}\" CACHE PATH \"\" FORCE)"
    end
    # mlx-sys runs CMake through the `cmake` crate, which passes no extra -D options but
    # does honour CMAKE_TOOLCHAIN_FILE from the environment; a toolchain file may set
    # cache entries before the project is configured.
    toolchain = buildpath/"homebrew-fetchcontent.cmake"
    toolchain.write <<~CMAKE
      set(FETCHCONTENT_FULLY_DISCONNECTED ON CACHE BOOL "" FORCE)
      #{cache.join("\n")}
    CMAKE
    ENV["CMAKE_TOOLCHAIN_FILE"] = toolchain.to_s

    # mlx-sys compiles mlx.metallib into MLX_RS_METAL_PATH (default ~/.mlx/lib/<key>, a
    # throwaway home during `brew install`) and MLX loads it from that absolute path
    # (METAL_PATH) unless one sits beside the executable. Keep it in the keg.
    ENV["MLX_RS_METAL_PATH"] = (libexec/"mlx").to_s

    system "cargo", "install", *std_cargo_args(path: "supervisor")
    system "cargo", "install", *std_cargo_args(path: "worker", features: "metal")
  end

  def caveats
    <<~CAVEATS
      mlx-serve was built for this version of macOS (MACOSX_DEPLOYMENT_TARGET), so MLX uses
      the fastest Metal kernels it has. After upgrading macOS (to 26.2 or newer in
      particular), rebuild to get the newer kernels:
        brew reinstall mlx-serve
    CAVEATS
  end

  # `brew services start mlx-serve` runs the daemon in the foreground under launchd (label
  # homebrew.mxcl.mlx-serve). Use this or `mlx-serve service install`, not both: they
  # would bind the same port (docs/install.md).
  service do
    run [opt_bin/"mlx-serve", "start", "--foreground"]
    # KeepAlive {Crashed: true}: launchd restarts the daemon when a signal killed it, not
    # after a clean stop (exit 0) and not in a loop on a start-up error such as a bad
    # config or a port already taken (exit 1).
    keep_alive crashed: true
    working_dir var
    log_path var/"log/mlx-serve.log"
    error_log_path var/"log/mlx-serve.log"
    # No MLX_SERVE_HOME: the service uses ~/.mlx-serve like the CLI, so models pulled
    # with `mlx-serve pull` and ~/.mlx-serve/config.yaml apply to it.
  end

  test do
    assert_match "mlx-serve #{version}", shell_output("#{bin}/mlx-serve --version")
    assert_match "mlx-serve-worker #{version}", shell_output("#{bin}/mlx-serve-worker --version")
    assert_path_exists libexec/"mlx/mlx.metallib"

    port = free_port
    ENV["MLX_SERVE_HOME"] = (testpath/"home").to_s
    server = [bin/"mlx-serve", "start", "--foreground", "--host", "127.0.0.1", "--port", port]
    pid = spawn(*server.map(&:to_s))
    begin
      health = shell_output("curl --silent --fail --retry 30 --retry-delay 1 --retry-connrefused " \
                            "http://127.0.0.1:#{port}/health")
      assert_match '"status":"ok"', health
    ensure
      Process.kill "TERM", pid
      _, status = Process.wait2 pid
    end
    assert_predicate status, :success?, "mlx-serve did not exit cleanly on SIGTERM"
  end
end
