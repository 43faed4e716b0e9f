# A small stand-in for the parts of Homebrew's formula DSL that Formula/mlx-serve.rb uses,
# so the formula can be loaded and its blocks run on a machine without Homebrew
# (check_formula.rb drives it). Class-level DSL calls are recorded; `install` runs with
# `system` recorded instead of executed; `service` is evaluated into a plain hash; `test`
# runs for real against a stand-in keg. Names and semantics follow Homebrew's
# Library/Homebrew/{formula,resource,service}.rb; anything else raises NoMethodError, so
# a formula using more of the DSL fails here loudly rather than passing unchecked.
# Plain Ruby 2.6 (macOS' system Ruby): no gems, no newer syntax.
require "English"
require "pathname"
require "socket"

# Raised by `odie` (Homebrew prints the message and stops the build).
class FormulaDied < StandardError; end

# Raised by the test-block assertions (Homebrew uses Minitest's).
class AssertionFailed < StandardError; end

# Homebrew's OS module: which platform the formula is evaluated on.
module OS
  def self.mac?
    RUBY_PLATFORM.include?("darwin")
  end

  def self.linux?
    RUBY_PLATFORM.include?("linux")
  end
end

# Homebrew's MacOS.full_version (a MacOSVersion: major, minor), fixed to macOS 26.2 so the
# install steps read the same on every machine.
module MacOS
  Version = Struct.new(:major, :minor) do
    def to_s
      "#{major}.#{minor}"
    end
  end

  def self.full_version
    Version.new(26, 2)
  end
end

# Homebrew's Version, reduced to what the formula reads: the version parsed from a url.
module StubVersion
  def self.from_url(url)
    url.to_s[/[-v](\d+(?:\.\d+)+)(?:\.tar\.gz|\.tar\.xz|\.zip)\z/, 1]
  end
end

# A `resource "name" do url ...; sha256 ... end` block.
class Resource
  attr_reader :name, :staged_to

  def initialize(name)
    @name = name
    @staged_to = []
  end

  def url(value = nil, **_options)
    @url = value if value
    @url
  end

  def sha256(value = nil)
    @sha256 = value if value
    @sha256
  end

  def version(value = nil)
    @version = value if value
    @version || StubVersion.from_url(@url)
  end
end

# `(buildpath/"dir").install resource("x")` stages a resource into a directory.
class Pathname
  def install(*sources)
    sources.each do |source|
      raise ArgumentError, "stub: Pathname#install only stages resources" unless source.is_a?(Resource)

      mkpath
      source.staged_to << self
      (self/".staged-resource").write("#{source.name}\n")
    end
  end
end

# The `service do ... end` block, evaluated into a hash of what it sets.
class ServiceStub
  # Library/Homebrew/service.rb: KEEP_ALIVE_KEYS.
  KEEP_ALIVE_KEYS = [:always, :successful_exit, :crashed, :path].freeze
  SETTERS = [:run, :working_dir, :root_dir, :log_path, :error_log_path, :input_path,
             :environment_variables, :process_type, :throttle_interval, :restart_delay,
             :run_type, :interval, :cron, :nice, :require_root, :run_at_load,
             :launch_only_once, :macos_legacy_timers, :name, :sockets].freeze
  FORMULA_PATHS = [:opt_bin, :opt_sbin, :opt_libexec, :opt_prefix, :var, :etc, :bin,
                   :libexec, :std_service_path_env].freeze

  attr_reader :fields

  def initialize(formula)
    @formula = formula
    @fields = {}
  end

  SETTERS.each do |setter|
    define_method(setter) { |*args, **options| @fields[setter] = options.empty? ? args.first : options }
  end

  def keep_alive(value)
    value = { always: value } if [true, false].include?(value)
    unknown = value.keys - KEEP_ALIVE_KEYS
    raise TypeError, "Service#keep_alive only allows: #{KEEP_ALIVE_KEYS}" unless unknown.empty?

    @fields[:keep_alive] = value
  end

  FORMULA_PATHS.each do |path|
    define_method(path) { @formula.public_send(path) }
  end
end

# The Formula base class: class-level DSL recorder plus the instance helpers the
# install and test blocks call.
class Formula
  class << self
    attr_reader :service_block, :test_block

    def inherited(subclass)
      super
      Formula.loaded << subclass
    end

    def loaded
      @loaded ||= []
    end

    def fields
      @fields ||= {}
    end

    def dependencies
      @dependencies ||= []
    end

    def resources
      @resources ||= {}
    end

    [:desc, :homepage, :sha256, :license].each do |field|
      define_method(field) { |value| fields[field] = value }
    end

    def url(value, **_options)
      fields[:url] = value
    end

    def head(value, **options)
      fields[:head] = [value, options]
    end

    def depends_on(spec)
      dependencies << spec
    end

    def resource(name, &block)
      resource = Resource.new(name)
      resource.instance_eval(&block)
      resources[name] = resource
    end

    def service(&block)
      @service_block = block
    end

    def test(&block)
      @test_block = block
    end
  end

  # Every `system` call of `install`: the command and the environment it would see.
  attr_reader :calls
  attr_reader :prefix, :buildpath, :testpath, :homebrew_prefix
  attr_writer :version

  def initialize(prefix:, buildpath:, testpath:, homebrew_prefix:)
    @prefix = Pathname(prefix)
    @buildpath = Pathname(buildpath)
    @testpath = Pathname(testpath)
    @homebrew_prefix = Pathname(homebrew_prefix)
    @calls = []
  end

  def version
    @version || StubVersion.from_url(self.class.fields[:url])
  end

  def bin
    prefix/"bin"
  end

  def libexec
    prefix/"libexec"
  end

  def var
    homebrew_prefix/"var"
  end

  def etc
    homebrew_prefix/"etc"
  end

  def opt_prefix
    homebrew_prefix/"opt"/"mlx-serve"
  end

  def opt_bin
    opt_prefix/"bin"
  end

  def opt_libexec
    opt_prefix/"libexec"
  end

  def std_service_path_env
    "#{homebrew_prefix}/bin:#{homebrew_prefix}/sbin:/usr/bin:/bin:/usr/sbin:/sbin"
  end

  def resource(name)
    self.class.resources.fetch(name) { raise ArgumentError, "no resource #{name.inspect}" }
  end

  def resources
    self.class.resources.values
  end

  # Homebrew's formula.rb (2026): `--jobs N --locked --root=<root> --path=<path>` and
  # `--features=a,b` when features are given.
  def std_cargo_args(root: prefix, path: ".", features: nil)
    args = ["--jobs", "2", "--locked", "--root=#{root}", "--path=#{path}"]
    args += ["--features=#{Array(features).join(",")}"] if features
    args
  end

  # Recorded, not run: the install steps are checked, the build itself needs macOS.
  def system(*args)
    @calls << { args: args.map(&:to_s), env: ENV.to_h }
    true
  end

  # `quiet_system` (output hidden, status returned): recorded; it answers with
  # `quiet_system_status`, true unless a check sets it (a Mac without the Metal toolchain).
  attr_writer :quiet_system_status

  def quiet_system(*args)
    @calls << { args: args.map(&:to_s), env: ENV.to_h }
    @quiet_system_status.nil? ? true : @quiet_system_status
  end

  def odie(message)
    raise FormulaDied, message
  end

  def ohai(*); end

  def opoo(*); end

  # ---- test-block helpers (Homebrew's Formula#shell_output, #free_port, Minitest) ----

  def shell_output(command, result = 0)
    output = `#{command}`
    status = $CHILD_STATUS
    assert_equal result, status.exitstatus, "`#{command}` exited #{status.exitstatus}: #{output}"
    output
  end

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  def assert_equal(expected, actual, message = nil)
    return if expected == actual

    raise AssertionFailed, message || "expected #{expected.inspect}, got #{actual.inspect}"
  end

  def assert_match(expected, actual, message = nil)
    pattern = expected.is_a?(Regexp) ? expected : Regexp.new(Regexp.escape(expected.to_s))
    return if pattern.match?(actual.to_s)

    raise AssertionFailed, message || "expected #{actual.inspect} to match #{pattern.inspect}"
  end

  def assert_predicate(object, predicate, message = nil)
    return if object.public_send(predicate)

    raise AssertionFailed, message || "expected #{object.inspect} to be #{predicate}"
  end

  def assert_path_exists(path, message = nil)
    return if File.exist?(path.to_s)

    raise AssertionFailed, message || "expected #{path} to exist"
  end
end
