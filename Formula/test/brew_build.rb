# Runs the formula's `install` the way `brew install` would, as far as Linux allows
# (tests/formula_build.rs drives it):
#   ruby Formula/test/brew_build.rb FORMULA MIRROR REPORT
# The current directory is the build path: an unpacked release tarball. Unlike
# check_formula.rb, which records `install`, this runs it for real:
# - `system` executes (scripts/setup --mlx-sys-only and anything else), and a failing
#   command stops the build as Homebrew's BuildError does;
# - `(dir).install resource(name)` stages the resource the way Homebrew does, from MIRROR
#   (one archive per resource, named `<name>.<ext of its url>`, standing in for the
#   download; checksums are not verified, the archives are not the published ones);
# - `cargo install` is recorded, not run: it builds MLX with Metal, which needs macOS.
#   The environment it would see (CMAKE_TOOLCHAIN_FILE, ...) goes into REPORT (JSON) so
#   the test can configure mlx-c with it, as mlx-sys' build script would;
# - `quiet_system "xcrun", ...` (the Metal toolchain check) is recorded and taken as
#   passing: only a Mac has xcrun.
require "fileutils"
require "json"
require "open3"
require "tmpdir"
require_relative "brew_stub"

formula_path, mirror, report_path = ARGV
abort "usage: brew_build.rb FORMULA MIRROR REPORT" unless report_path
MIRROR = Pathname(mirror).expand_path

# Homebrew's BuildError: a `system` step exited non-zero.
class BuildError < StandardError; end

# Staging, after Homebrew's Resource#unpack and AbstractFileDownloadStrategy#stage/#chdir
# (Library/Homebrew/{resource,download_strategy}.rb): the archive is extracted into a
# scratch directory; when it holds a single directory, that one is entered; everything
# there (dotfiles too) moves into the target.
class Resource
  def archive
    ext = url.to_s[/(\.tar\.gz|\.tar\.xz|\.zip)\z/, 1] or raise ArgumentError, "#{name}: unknown archive type #{url}"
    path = MIRROR/"#{name}#{ext}"
    raise ArgumentError, "#{name}: #{path} is missing" unless path.file?

    path
  end

  def stage(target)
    Dir.mktmpdir("homebrew-unpack") do |scratch|
      scratch = Pathname(scratch)
      command = ["tar", "-xf", archive.to_s, "-C", scratch.to_s]
      command = ["unzip", "-q", archive.to_s, "-d", scratch.to_s] if archive.to_s.end_with?(".zip")
      _, status = Open3.capture2e(*command)
      raise BuildError, "#{name}: could not unpack #{archive}" unless status.success?

      entries = scratch.children
      root = entries.size == 1 && entries.first.directory? ? entries.first : scratch
      target.mkpath
      root.children.each { |child| FileUtils.mv(child.to_s, (target/child.basename).to_s) }
    end
    staged_to << target
  end
end

class Pathname
  def install(*sources)
    sources.each do |source|
      raise ArgumentError, "brew_build: Pathname#install only stages resources" unless source.is_a?(Resource)

      source.stage(self)
    end
  end
end

class Formula
  def system(*args)
    args = args.map(&:to_s)
    @calls << { args: args, env: ENV.to_h, ran: args.first(2) != %w[cargo install] }
    return true unless @calls.last[:ran]

    Kernel.system(*args) or raise BuildError, "Failed executing: #{args.join(" ")} (#{$CHILD_STATUS})"
    true
  end

  def quiet_system(*args)
    @calls << { args: args.map(&:to_s), env: ENV.to_h, ran: false }
    true
  end
end

load formula_path
klass = Formula.loaded.last
buildpath = Pathname.pwd
# Homebrew builds with HOME set to a fresh directory inside the build path.
home = buildpath/".brew_home"
home.mkpath
ENV["HOME"] = home.to_s
formula = klass.new(prefix: buildpath/"../Cellar/mlx-serve/0", buildpath: buildpath,
                    testpath: buildpath/"../test", homebrew_prefix: buildpath/"../brew")
result = { "ok" => true }
begin
  formula.install
rescue FormulaDied, BuildError => e
  result = { "ok" => false, "error" => "#{e.class}: #{e.message}" }
end
cargo = formula.calls.find { |c| c[:args].first(2) == %w[cargo install] }
keys = %w[CMAKE_TOOLCHAIN_FILE MLX_RS_METAL_PATH MLX_SERVE_DEV_CACHE MACOSX_DEPLOYMENT_TARGET HOME]
result["steps"] = formula.calls.map { |c| { "args" => c[:args], "ran" => c[:ran] } }
result["cargo_env"] = cargo ? cargo[:env].slice(*keys) : nil
result["staged"] = formula.resources.to_h { |r| [r.name, r.staged_to.map(&:to_s)] }
File.write(report_path, JSON.pretty_generate(result))
puts result["ok"] ? "install steps done" : "install stopped: #{result["error"]}"
exit(result["ok"] ? 0 : 1)
